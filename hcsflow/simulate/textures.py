"""Random streams and noise textures of the simulator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def _child(ss: np.random.SeedSequence, i: int) -> np.random.Generator:
    """Generator of the ``i``-th independent stream of ``ss`` (stateless, unlike ``spawn``)."""
    return np.random.default_rng(
        np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, int(i)))
    )


def _seed_sequence(seed: int | Sequence[int] | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def _normalise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    s = a.std()
    return (a / s if s > 0 else a).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit variance; coarse grid for large ``sigma``."""
    h, w = shape
    f = max(1, int(sigma // 3))
    ch, cw = -(-h // f) + 2, -(-w // f) + 2
    coarse = ndi.gaussian_filter(rng.standard_normal((ch, cw)).astype(np.float32), sigma / f)
    if f > 1:
        coarse = ndi.zoom(coarse, f, order=1, grid_mode=False)
    return _normalise(coarse[1 : h + 1, 1 : w + 1] if f > 1 else coarse[:h, :w])


def _bandpass(rng: np.random.Generator, shape: tuple[int, int], s1: float, s2: float) -> np.ndarray:
    """Band-passed white noise (difference of Gaussians), unit variance."""
    n = rng.standard_normal(shape).astype(np.float32)
    a = ndi.gaussian_filter(n, s1, truncate=3.0)
    b = ndi.gaussian_filter(a, math.sqrt(max(s2**2 - s1**2, 1e-6)), truncate=3.0)
    return _normalise(a - b)
