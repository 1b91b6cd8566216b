"""Shared helpers of the per-object measurement families.

Every family module (``shape``, ``intensity``, ``texture``, ...) measures objects given as label
images in which object ``k`` (1-based) is the ``k``-th row of the output, and returns one
float array per feature, NaN for an object absent from the label image (a cell without a
nucleus has no ``Nuclei_*`` or ``Cytoplasm_*`` pixels of its own). The functions here are the
label-indexed reductions the families share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

#: Type of the per-feature result of a family: full column name -> float64 array of shape (n,).
Features = dict[str, np.ndarray]

#: The three compartments, in output column order.
COMPARTMENTS: tuple[str, ...] = ("Cells", "Nuclei", "Cytoplasm")


def counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of objects ``1..n``.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Label image, 0 is background, labels in ``0..n``.
    n : int
        Number of objects (rows of the output).

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    return np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1]


def label_sums(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` over the pixels of each object ``1..n``.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    values : ndarray of float, shape (H, W)
    n : int

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    return np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)[1 : n + 1]


def present(labels: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask, shape (n,): True for objects with at least one pixel."""
    return counts(labels, n) > 0


def nan_absent(features: Features, mask: np.ndarray) -> Features:
    """Set every feature to NaN where ``mask`` (shape (n,)) is False; returns ``features``."""
    if not mask.all():
        for values in features.values():
            values[~mask] = np.nan
    return features


def check_compartments(
    compartments: Mapping[str, np.ndarray],
    n: int,
    image: np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
) -> None:
    """Raise ValueError unless every label image is 2-D, integer, equal in shape, labels <= n.

    With ``image`` (shape (C, H, W)) and its C ``channel_names``, also check that the image
    has one plane per name and the label images' shape (H, W).
    """
    if image is not None:
        names = list(channel_names or [])
        if image.ndim != 3 or image.shape[0] != len(names):
            raise ValueError(
                f"image must be (C, H, W) with C={len(names)} channels, got {image.shape}"
            )
        for lab in compartments.values():
            if lab.shape != image.shape[1:]:
                raise ValueError(f"label images {lab.shape} do not match the image {image.shape}")
    shapes = {name: lab.shape for name, lab in compartments.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"label images differ in shape: {shapes}")
    for name, lab in compartments.items():
        if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(
                f"{name} labels must be a 2-D integer image, got {lab.dtype} {lab.shape}"
            )
        if lab.size and int(lab.max()) > n:
            raise ValueError(f"{name} labels go up to {int(lab.max())}, more than n={n}")


def group_pixels(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the pixels of objects ``1..n``, grouped by object (counting sort).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Label image, 0 is background, labels in ``0..n``.
    n : int
        Number of objects.

    Returns
    -------
    order : ndarray of int64, shape (P,)
        Flat (C-order) indices of the P object pixels; those of object ``k`` are
        ``order[offsets[k - 1]:offsets[k]]``, in increasing (C) order.
    offsets : ndarray of int64, shape (n + 1,)
        Start of each object's run in ``order``; ``offsets[0] == 0``, ``offsets[n] == P``.
    """
    flat = np.ascontiguousarray(labels).ravel().astype(np.int64, copy=False)
    counts = np.bincount(flat, minlength=n + 1)[: n + 1]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts[1:], out=offsets[1:])
    return _scatter(flat, offsets), offsets


def centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts (n,) and centroids (n, 2) of labels ``1..n`` (NaN where absent)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {lab.shape}")
    flat = lab.ravel()
    keep = (flat > 0) & (flat <= n)
    idx = flat[keep].astype(np.intp)
    pos = np.flatnonzero(keep)
    yy, xx = np.divmod(pos, lab.shape[1])
    count = np.bincount(idx, minlength=n + 1)[1:].astype(np.float64)
    sy = np.bincount(idx, weights=yy, minlength=n + 1)[1:]
    sx = np.bincount(idx, weights=xx, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cen = np.stack([sy / count, sx / count], axis=1)
    return count, cen


@numba.njit(cache=True, nogil=True)
def _scatter(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    fill = offsets[:-1].copy()
    order = np.empty(offsets[-1], dtype=np.int64)
    for p in range(flat.size):
        k = flat[p]
        if k > 0:
            order[fill[k - 1]] = p
            fill[k - 1] += 1
    return order
