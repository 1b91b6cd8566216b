"""Stacks of one channel under a known flat-field and dark-field, for illumination benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np

from hcsflow.simulate.field import _simulate
from hcsflow.simulate.illumination import background_level, make_illumination
from hcsflow.simulate.params import CHANNELS, DEFAULT_APPEARANCE, VIGNETTING
from hcsflow.simulate.textures import _child


def simulate_illumination_stack(
    n_fields: int,
    shape: tuple[int, int] = (256, 256),
    *,
    vignetting: str = "radial",
    dark_offset: bool = True,
    density: float = 1.0,
    seed: int = 0,
    channel: str = "DNA",
    background_cv: float = 0.25,
    background_jitter: float = 0.05,
    sites: int = 4,
    image_mpp: float = 0.65,
    corner: float | None = None,
    offset: float | None = None,
    dark_gradient: float | None = None,
    background: float | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many raw fields of one channel under one known flat-field and dark-field.

    Parameters
    ----------
    n_fields : int
        Number of fields.
    shape : tuple of int
        Field shape ``(H, W)``.
    vignetting : str
        Kind passed to :func:`make_illumination`.
    dark_offset : bool
        Whether the camera adds an offset.
    density : float
        Mean cell density (0.2 mimics sparse wells, where most pixels are background); each
        field varies around it (15 % SD), and so does its brightness (10 % SD).
    seed : int
        Seed of the illumination and of every field.
    channel : str
        One of :data:`CHANNELS`.
    background_cv : float
        Coefficient of variation of the background fluorescence level (medium and compound
        autofluorescence, out-of-focus haze) from well to well: consecutive groups of ``sites``
        fields share a well, whose background level is drawn log-normal with mean 1 and this
        CV. 0 gives every well the same background level.
    background_jitter : float
        Coefficient of variation (log-normal, mean 1) of each field's background level around
        its well's (focus and lamp drift).
    sites : int
        Fields per well.
    image_mpp : float
        Micrometres per pixel. A larger value simulates a field of the same pixel count
        covering more specimen, as a large camera field binned down does (2.6 with 256 x 256
        pixels covers the area of a 1024 x 1024 field at 0.65).
    corner, offset, dark_gradient : float, optional
        Vignetting depth, camera offset and top-to-bottom dark gradient (raw units), passed to
        :func:`make_illumination`; default drawn there.
    background : float, optional
        Mean specimen background above the camera offset, in raw units at the flat-field's
        mean (before the well and field variation); default about 45 (DNA channel).
    gain, read_noise : float, optional
        Camera gain (raw units per photo-electron) and Gaussian read noise (raw units);
        default those of :data:`DEFAULT_APPEARANCE`.

    With every optional camera and optics argument left at ``None`` the stack is the one
    simulated before they existed, byte for byte; :func:`random_optics` draws them from wide
    ranges.

    Returns
    -------
    stack : ndarray of shape (n_fields, H, W), uint16
    flatfield : ndarray of shape (H, W), float32
        Mean 1.
    darkfield : ndarray of shape (H, W), float32
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    if n_fields < 1:
        raise ValueError(f"n_fields must be >= 1, got {n_fields}")
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    if background_cv < 0 or background_jitter < 0:
        raise ValueError(
            f"background_cv and background_jitter must be >= 0, got {background_cv}, "
            f"{background_jitter}"
        )
    for name, value in (("background", background), ("gain", gain)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if read_noise is not None and not read_noise >= 0:
        raise ValueError(f"read_noise must be >= 0, got {read_noise}")
    c = CHANNELS.index(channel)
    flat, dark = make_illumination(
        shape,
        vignetting=vignetting,
        dark_offset=dark_offset,
        seed=seed,
        corner=corner,
        offset=offset,
        dark_gradient=dark_gradient,
    )
    # the background level of the default appearance, in raw units (45 x background factor)
    bg_unit = 1.0 if background is None else float(background) / 45.0
    stack = np.empty((n_fields, *shape), np.uint16)
    for i in range(n_fields):
        ss = np.random.SeedSequence([int(seed), 0x57AC, i])
        # fields differ in brightness and density from well to well, as on a plate
        g = _child(ss, 40)
        app = dict(DEFAULT_APPEARANCE)
        app["brightness"] = float(np.exp(g.normal(0, 0.1)))
        app["background"] = background_level(
            [int(seed), 0xB6, i // sites], background_cv
        ) * background_level(ss, background_jitter, stream=41)
        if background is not None:
            app["background"] *= bg_unit
        if gain is not None:
            app["gain"] = float(gain)
        if read_noise is not None:
            app["read_noise"] = float(read_noise)
        f = _simulate(
            ss,
            shape,
            image_mpp,
            density=density * float(np.exp(g.normal(0, 0.15))),
            phenotype=None,
            appearance=app,
            flatfield=flat,
            darkfield=dark,
            out_of_focus=False,
            channels=(c,),
        )
        stack[i] = f.image[0]
    return stack, flat[c].copy(), dark[c].copy()


def random_optics(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a plate's optics and camera from wide ranges, for :func:`simulate_illumination_stack`.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict
        Keyword arguments of :func:`simulate_illumination_stack`: ``vignetting`` (any kind of
        :data:`VIGNETTING`), ``corner`` (vignetting depth, uniform 0.45-0.95), ``offset``
        (camera offset, uniform 0-500 raw units), ``dark_gradient`` (top-to-bottom, uniform
        0-20 raw units, either sign), ``background`` (specimen background above the offset,
        log-uniform 5-2,000 raw units), ``gain`` (log-uniform 0.5-10 raw units per
        photo-electron), ``read_noise`` (log-uniform 1-12 raw units), ``background_cv``
        (well-to-well, uniform 0.05-0.4) and ``density`` (cells, log-uniform 0.2-1.5).
    """

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return {
        "vignetting": str(VIGNETTING[int(rng.integers(len(VIGNETTING)))]),
        "corner": float(rng.uniform(0.45, 0.95)),
        "offset": float(rng.uniform(0.0, 500.0)),
        "dark_gradient": float(rng.uniform(-20.0, 20.0)),
        "background": logu(5.0, 2000.0),
        "gain": logu(0.5, 10.0),
        "read_noise": logu(1.0, 12.0),
        "background_cv": float(rng.uniform(0.05, 0.4)),
        "density": logu(0.2, 1.5),
    }
