"""Geometry of simulated cells: clustered centres, Fourier outlines, touching neighbours."""

from __future__ import annotations

import math

import numpy as np


def _place_centres(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    sep: np.ndarray,
    cluster_sigma: float,
    clustering: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered points (Thomas process) with a pairwise hard core.

    Candidate ``i`` carries the hard-core radius ``sep[i]``; two accepted points are at least
    ``sep_i + sep_j`` apart. Candidates are visited in random order until ``n`` are accepted.

    Returns
    -------
    pos : ndarray of shape (m, 2)
        Accepted (row, column) positions, ``m <= n``.
    idx : ndarray of shape (m,)
        Index of each accepted candidate into ``sep``.
    """
    h, w = shape
    n_cand = len(sep)
    if n == 0 or n_cand == 0:
        return np.zeros((0, 2)), np.zeros(0, int)
    n_cl = int(round(n_cand * clustering))
    n_par = max(1, int(round(n_cl / 14)))
    parents = rng.uniform((0, 0), (h, w), size=(n_par, 2))
    off = parents[rng.integers(0, n_par, n_cl)] + rng.normal(0, cluster_sigma, (n_cl, 2))
    uni = rng.uniform((0, 0), (h, w), size=(n_cand - n_cl, 2))
    cand = np.concatenate([off, uni])[rng.permutation(n_cand)]
    inside = (cand[:, 0] >= 0) & (cand[:, 0] < h) & (cand[:, 1] >= 0) & (cand[:, 1] < w)
    acc_pos = np.empty((n, 2))
    acc_sep = np.empty(n)
    acc_idx = np.empty(n, int)
    m = 0
    for i in np.flatnonzero(inside):
        if m:
            d2 = ((acc_pos[:m] - cand[i]) ** 2).sum(1)
            if np.any(d2 < (acc_sep[:m] + sep[i]) ** 2):
                continue
        acc_pos[m], acc_sep[m], acc_idx[m] = cand[i], sep[i], i
        m += 1
        if m == n:
            break
    return acc_pos[:m], acc_idx[:m]


def _fourier_radius(rng: np.random.Generator, amp: float, modes: int) -> np.ndarray:
    """Random Fourier coefficients (m, amplitude, phase) of a star-shaped outline."""
    ms = np.arange(2, modes + 1)
    a = np.abs(rng.normal(0, amp, len(ms))) / (ms - 1.0) ** 0.9
    p = rng.uniform(0, 2 * np.pi, len(ms))
    return np.stack([ms, a, p], 1)


def _shape_r(u: np.ndarray, v: np.ndarray, a: float, b: float, coef: np.ndarray) -> np.ndarray:
    """Normalised radius of points (u, v) in an ellipse (a, b) with a Fourier outline.

    ``coef`` rows are (m, amplitude, phase) for consecutive modes m = 2, 3, ...; the outline is
    ``1 + sum_m amplitude cos(m phi + phase)``, evaluated with the angle-addition recurrence.
    """
    un, vn = u / a, v / b
    rho = np.sqrt(un * un + vn * vn)
    inv = 1.0 / np.maximum(rho, 1e-6)
    c1, s1 = un * inv, vn * inv  # cos(phi), sin(phi)
    cm, sm = c1 * c1 - s1 * s1, 2 * c1 * s1  # m = 2
    rad = np.ones_like(rho)
    for m_idx in range(len(coef)):
        if m_idx:
            cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
        amp, ph = float(coef[m_idx, 1]), float(coef[m_idx, 2])
        rad += amp * (math.cos(ph) * cm - math.sin(ph) * sm)
    return rho / np.maximum(rad, 0.3)


def _touching(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean border map (pixel differs from a 4-neighbour) and the set of touching labels."""
    border = np.zeros(cells.shape, bool)
    touch: list[np.ndarray] = []
    for a, b, sl_a, sl_b in (
        (
            cells[1:, :],
            cells[:-1, :],
            (slice(1, None), slice(None)),
            (slice(None, -1), slice(None)),
        ),
        (
            cells[:, 1:],
            cells[:, :-1],
            (slice(None), slice(1, None)),
            (slice(None), slice(None, -1)),
        ),
    ):
        diff = a != b
        border[sl_a] |= diff
        border[sl_b] |= diff
        both = diff & (a > 0) & (b > 0)
        touch.append(a[both])
        touch.append(b[both])
    return border, np.unique(np.concatenate(touch)) if touch else np.zeros(0, cells.dtype)
