"""Crops of a fixed physical size centred on each cell, for CNN embeddings.

A CNN that embeds single cells (DeepProfiler, Moshkov et al. 2024) sees a square window of
the field, all channels, centred on the cell: the nucleus centroid when the cell has one
(the nucleus is what the eye and the network align on), else the whole cell's centroid. The
window has a fixed size in micrometres, so that a model sees cells at one scale whatever the
microscope's pixel size; :func:`crop_size_px` turns it into pixels.

Crops are cut by one gather from a zero-padded copy of the field: a strided view of every
``size x size`` window of the padded image (no copy) indexed at the cells' top-left corners,
which copies exactly the ``n`` crops, already in ``(n, C, size, size)`` order. A cell whose
window reaches beyond the field keeps its row: the outside is zero and the cell is flagged
(``border``), so callers can leave such cells out of training or mark them in tables, but row
``k - 1`` always belongs to cell ``k``.

The integer centre of a crop is ``floor(centre + 0.5)``; the crop spans rows
``cy - size // 2 .. cy - size // 2 + size - 1`` (likewise columns), so the centre pixel is
crop pixel ``(size // 2, size // 2)`` for odd and even sizes alike.
"""

from __future__ import annotations

import numpy as np

from hcsflow.features._objects import centroids

__all__ = [
    "cell_centres",
    "crop_origins",
    "crop_size_px",
    "extract_crops",
    "gather_crops",
    "pad_image",
]


def crop_size_px(crop_um: float, image_mpp: float) -> int:
    """Edge of a crop of ``crop_um`` micrometres in pixels of size ``image_mpp``.

    Parameters
    ----------
    crop_um : float
        Crop edge in µm (> 0).
    image_mpp : float
        Pixel size of the image in µm per pixel (> 0).

    Returns
    -------
    int
        ``round(crop_um / image_mpp)`` (halves rounded up), at least 1.
    """
    crop_um, image_mpp = float(crop_um), float(image_mpp)
    if not (np.isfinite(crop_um) and crop_um > 0):
        raise ValueError(f"crop_um must be a positive number, got {crop_um!r}")
    if not (np.isfinite(image_mpp) and image_mpp > 0):
        raise ValueError(f"image_mpp must be a positive number, got {image_mpp!r}")
    return max(1, int(np.floor(crop_um / image_mpp + 0.5)))


def cell_centres(nuclei: np.ndarray, cells: np.ndarray, n: int) -> np.ndarray:
    """Centre of each cell: its nucleus centroid, else its own centroid.

    Parameters
    ----------
    nuclei : ndarray of int, shape (H, W)
        Nucleus labels; nucleus ``k`` belongs to cell ``k``. Labels above ``n`` are ignored.
    cells : ndarray of int, shape (H, W)
        Whole-cell labels ``0..n``.
    n : int
        Number of cells (rows).

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``(y, x)`` in pixels; row ``k - 1`` is cell ``k``; NaN for a label with neither
        nucleus nor cell pixels.
    """
    nuclei, cells = np.asarray(nuclei), np.asarray(cells)
    if nuclei.shape != cells.shape:
        raise ValueError(f"nuclei {nuclei.shape} and cells {cells.shape} differ in shape")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_count, n_cen = centroids(nuclei, n)
    _, c_cen = centroids(cells, n)
    return np.where((n_count > 0)[:, None], n_cen, c_cen)


def pad_image(image: np.ndarray, size: int) -> np.ndarray:
    """The image with ``size`` zero pixels on every side (for :func:`gather_crops`).

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
    size : int
        Crop edge in pixels.

    Returns
    -------
    ndarray, shape (C, H + 2 size, W + 2 size), the image's dtype
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    c, h, w = image.shape
    out = np.zeros((c, h + 2 * size, w + 2 * size), dtype=image.dtype)
    out[:, size : size + h, size : size + w] = image
    return out


def crop_origins(
    centres: np.ndarray, size: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-left corners of the crops around ``centres`` and their border flags.

    Parameters
    ----------
    centres : ndarray, shape (n, 2)
        ``(y, x)`` in pixels; non-finite rows are placed wholly outside the image.
    size : int
        Crop edge in pixels.
    shape : tuple of int
        ``(H, W)`` of the image.

    Returns
    -------
    top, left : ndarray of intp, shape (n,)
        First row and column of each crop in image coordinates, clipped to
        ``[-size, H]`` / ``[-size, W]`` (a crop starting there lies wholly outside).
    border : ndarray of bool, shape (n,)
        True where the crop reaches beyond the image (or the centre is not finite).
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    h, w, size = int(shape[0]), int(shape[1]), int(size)
    finite = np.isfinite(centres).all(axis=1)
    cen = np.floor(np.where(finite[:, None], centres, -2.0 * size) + 0.5)
    top = cen[:, 0] - size // 2
    left = cen[:, 1] - size // 2
    border = ~finite | (top < 0) | (left < 0) | (top + size > h) | (left + size > w)
    top = np.clip(top, -size, h).astype(np.intp)
    left = np.clip(left, -size, w).astype(np.intp)
    return top, left, border


def gather_crops(
    padded: np.ndarray, centres: np.ndarray, size: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cut crops from an image padded by :func:`pad_image` (one gather).

    Parameters
    ----------
    padded : ndarray, shape (C, H + 2 size, W + 2 size)
    centres : ndarray, shape (n, 2)
        ``(y, x)`` in pixels of the unpadded image; non-finite rows give all-zero crops.
    size : int
        Crop edge in pixels (the padding of ``padded``).
    shape : tuple of int
        ``(H, W)`` of the unpadded image.

    Returns
    -------
    crops : ndarray, shape (n, C, size, size), the image's dtype
    border : ndarray of bool, shape (n,)
        True where the crop reaches beyond the image (or the centre is not finite).
    """
    h, w, size = int(shape[0]), int(shape[1]), int(size)
    if padded.ndim != 3 or padded.shape[1:] != (h + 2 * size, w + 2 * size):
        raise ValueError(
            f"padded image {padded.shape} does not match shape {shape} padded by {size}"
        )
    top, left, border = crop_origins(centres, size, (h, w))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    # (C, H', W', S, S) -> (H', W', C, S, S): indexing the first two axes copies (n, C, S, S).
    windows = np.moveaxis(windows, 0, 2)
    crops = windows[top + size, left + size]
    return np.ascontiguousarray(crops), border


def extract_crops(
    image: np.ndarray, centres: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Square crops of every channel centred on each centre; zero outside the image.

    Parameters
    ----------
    image : ndarray of float32, shape (C, H, W)
    centres : ndarray, shape (n, 2)
        ``(y, x)`` in pixels (e.g. :func:`cell_centres`); a non-finite row gives an all-zero
        crop flagged as border.
    size : int
        Crop edge in pixels.

    Returns
    -------
    crops : ndarray of float32, shape (n, C, size, size)
        Crop ``i`` is centred on ``centres[i]`` (rounded), at pixel ``(size // 2, size // 2)``.
    border : ndarray of bool, shape (n,)
        True for crops that reach beyond the image (padded with zeros), never dropped.
    """
    image = np.asarray(image, dtype=np.float32)
    padded = pad_image(image, size)
    return gather_crops(padded, centres, size, image.shape[1:])
