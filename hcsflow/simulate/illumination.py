"""Flat-field and dark-field of the simulated microscope, and background-level draws."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hcsflow.simulate.params import VIGNETTING
from hcsflow.simulate.textures import _child, _seed_sequence


def make_illumination(
    shape: tuple[int, int],
    *,
    vignetting: str = "radial",
    dark_offset: bool = True,
    seed: int = 0,
    n_channels: int = 5,
    corner: float | None = None,
    offset: float | None = None,
    dark_gradient: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-channel flat-field and dark-field of a widefield microscope.

    Parameters
    ----------
    shape : tuple of int
        Field shape ``(H, W)``.
    vignetting : {"radial", "offcenter", "tilted", "elliptic", "none"}
        Centred radial fall-off; radial fall-off around an off-centre optical axis; a radial
        fall-off times a linear (tilted) plane; an elliptic, rotated fall-off; or uniform.
    dark_offset : bool
        If true, a camera offset of about 100 raw units with a weak smooth pattern; else zero.
    seed : int
        Seed of the per-channel strengths, centres and tilts.
    n_channels : int
        Number of channels.
    corner : float, optional
        Depth of the vignetting: the radial fall-off at the field point farthest from the
        optical axis, relative to the axis (in (0, 1]; 0.45 is a deep vignetting). Default:
        drawn per channel (about 0.6-0.8 at the corners of a square field).
    offset : float, optional
        Mean camera offset in raw units (with ``dark_offset``); default drawn per channel in
        90-130.
    dark_gradient : float, optional
        With ``dark_offset``: the dark-field is ``offset`` plus a linear gradient rising by
        this many raw units from the top row to the bottom row (mean 0), instead of the
        default weak tilted-plane-plus-blob pattern.

    The optional arguments replace values after they are drawn, so every other draw (and the
    default fields, with all three left at ``None``) stays the same.

    Returns
    -------
    flatfield : ndarray of shape (n_channels, H, W), float32
        Mean 1 per channel; for the radial kinds the corners of a square field fall to
        about 60-80 % of the brightest point.
    darkfield : ndarray of shape (n_channels, H, W), float32
        Additive offset in raw units.
    """
    if vignetting not in VIGNETTING:
        raise ValueError(f"unknown vignetting {vignetting!r}; expected one of {VIGNETTING}")
    h, w = (int(s) for s in shape)
    if h < 2 or w < 2:
        raise ValueError(f"illumination shape must be at least 2 x 2, got {shape}")
    if corner is not None and not 0.0 < corner <= 1.0:
        raise ValueError(f"corner must be in (0, 1], got {corner}")
    if offset is not None and not offset >= 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1110]))
    half = max(h, w) / 2.0
    y = ((np.arange(h) - (h - 1) / 2.0) / half)[:, None]
    x = ((np.arange(w) - (w - 1) / 2.0) / half)[None, :]
    flats = np.empty((n_channels, h, w), np.float32)
    darks = np.zeros((n_channels, h, w), np.float32)
    for c in range(n_channels):
        strength = rng.uniform(0.06, 0.15)
        cy, cx = 0.0, 0.0
        if vignetting in ("offcenter", "tilted"):
            ang = rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.15, 0.35) if vignetting == "offcenter" else rng.uniform(0, 0.1)
            cy, cx = rad * np.sin(ang), rad * np.cos(ang)
        if vignetting == "elliptic":
            theta = rng.uniform(0, np.pi)
            ratio = rng.uniform(1.5, 2.2)
            u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
            v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
            r2 = (u / np.sqrt(ratio)) ** 2 + (v * np.sqrt(ratio)) ** 2
        else:
            r2 = (x - cx) ** 2 + (y - cy) ** 2
        if corner is not None:
            # (1 + s r2max)^-2 = corner at the point farthest from the axis
            strength = (corner**-0.5 - 1.0) / float(np.max(r2))
        if vignetting == "none":
            f = np.ones((h, w))
        else:
            f = (1.0 + strength * r2) ** -2.0
        if vignetting == "tilted":
            ang = rng.uniform(0, 2 * np.pi)
            f = f * (1.0 + rng.uniform(0.12, 0.22) * (np.cos(ang) * x + np.sin(ang) * y))
        f = np.broadcast_to(f, (h, w))
        flats[c] = f / f.mean()
        if dark_offset:
            ang = rng.uniform(0, 2 * np.pi)
            pattern = rng.uniform(2, 6) * (np.cos(ang) * x + np.sin(ang) * y) + rng.uniform(
                1, 4
            ) * np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.5)
            level = rng.uniform(90, 130)
            if offset is not None:
                level = float(offset)
            if dark_gradient is not None:
                rows = np.arange(h, dtype=np.float64)[:, None] / max(h - 1, 1) - 0.5
                pattern = float(dark_gradient) * rows
            darks[c] = level + np.broadcast_to(pattern, (h, w))
    return flats, darks


def background_level(
    seed: int | Sequence[int] | np.random.SeedSequence, cv: float, *, stream: int = 0
) -> float:
    """A log-normal background-level factor with mean 1 and coefficient of variation ``cv``.

    Parameters
    ----------
    seed : int, sequence of int or numpy.random.SeedSequence
        Seed of the draw (a well's or a field's).
    cv : float
        Coefficient of variation (>= 0); 0 gives exactly 1 without drawing.
    stream : int
        Independent stream of ``seed`` to draw from.

    Returns
    -------
    float
    """
    if cv <= 0:
        return 1.0
    sigma = math.sqrt(math.log1p(cv * cv))
    g = _child(_seed_sequence(seed), stream)
    return float(math.exp(g.normal(-0.5 * sigma * sigma, sigma)))
