"""Training inputs of the embedder: per-channel statistics, resizing and random views.

:func:`channel_statistics` gives the per-channel normalization stored in a checkpoint,
:func:`_resize_all` brings the training crops to the network's input size once, and
:func:`augment` draws the random views of a batch (flip, 90° rotation, shift with zero fill,
per-channel gain) from a numpy generator, so that a seed fixes them.
:mod:`hcsflow.features.embed_train` uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["augment", "channel_statistics"]


def channel_statistics(crops: np.ndarray, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of every channel over all crops' pixels (float64).

    Parameters
    ----------
    crops : ndarray, shape (N, C, S, S)

    Returns
    -------
    mean, std : list of float, length C
        ``std`` is 1 for a constant channel.
    """
    c = crops.shape[1]
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    for i in range(0, crops.shape[0], chunk):
        x = np.asarray(crops[i : i + chunk], dtype=np.float64)
        s1 += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / max(count, 1)
    var = np.maximum(s2 / max(count, 1) - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1e-12), std, 1.0)
    std = np.where(std > 0, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def _resize_all(crops: np.ndarray, size: int, chunk: int = 512) -> Any:
    """Crops (N, C, S, S) -> float16 tensor (N, C, size, size), resized on the CPU."""
    import torch

    from hcsflow.features.embed_load import resize_crops

    n, c = crops.shape[:2]
    out = torch.empty((n, c, size, size), dtype=torch.float16)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            x = torch.from_numpy(np.asarray(crops[i : i + chunk], dtype=np.float32))
            out[i : i + chunk] = resize_crops(x, size).to(torch.float16)
    return out


def augment(x: Any, rng: np.random.Generator, shift: int, gain: float) -> Any:
    """Random flip/90° rotation, integer shift (zero fill) and per-channel gain of a batch.

    Parameters
    ----------
    x : Tensor, shape (B, C, S, S)
        Raw (not normalized) crops.
    rng : numpy.random.Generator
        Source of every random draw (deterministic).
    shift : int
        Maximal shift in pixels along each axis.
    gain : float
        Log-standard deviation of the multiplicative gain of each crop and channel.

    Returns
    -------
    Tensor, shape (B, C, S, S)
    """
    import torch

    b, c, s, _ = x.shape
    dev = x.device
    if shift > 0:
        dy = torch.from_numpy(rng.integers(-shift, shift + 1, b)).to(dev)
        dx = torch.from_numpy(rng.integers(-shift, shift + 1, b)).to(dev)
        xp = torch.nn.functional.pad(x, [shift, shift, shift, shift])
        ar = torch.arange(s, device=dev)
        rows = (shift + dy)[:, None] + ar
        cols = (shift + dx)[:, None] + ar
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.from_numpy(rng.integers(0, 2, b).astype(bool)).to(dev)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    k = rng.integers(0, 4, b)
    out = x.clone()
    for r in (1, 2, 3):
        sel = np.flatnonzero(k == r)
        if sel.size:
            idx = torch.from_numpy(sel).to(dev)
            out[idx] = torch.rot90(x[idx], r, (2, 3))
    if gain > 0:
        g = np.exp(rng.normal(0.0, gain, (b, c, 1, 1))).astype(np.float32)
        out = out * torch.from_numpy(g).to(dev)
    return out
