"""Per-image normalization of the network's two input channels.

The network sees two channels at the model's resolution: a nuclear stain and a cytoplasm or
membrane stain. Each is normalized per image so that microscopes, exposure times and bit
depths do not matter:

1. percentile clip: values are mapped linearly so that the ``low`` percentile (1 %) becomes 0
   and the ``high`` percentile (99.8 %) becomes 1, then clipped to [0, 1];
2. optional local contrast normalization (``local=True``): contrast-limited adaptive histogram
   equalization (CLAHE, as Mesmer's preprocessing) over tiles of ``kernel_size`` pixels, which
   evens out dim and bright regions of one field.

Images are resampled to the network's resolution by :func:`resize_float` (bilinear,
antialiased when shrinking) and label images by :func:`resize_labels` (nearest pixel
centre), in training and inference alike.

A blank (constant) image normalizes to zeros rather than dividing by zero. The shipped model is
trained with percentile scaling only (``local=False``); its checkpoint records the settings in
``meta["normalization"]`` and :func:`prepare_input` takes them as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Default normalization settings (the shipped model's).
DEFAULT_NORMALIZATION = {"low": 1.0, "high": 99.8, "local": False, "kernel_size": 64}


def normalize(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    local: bool = False,
    kernel_size: int = 64,
) -> np.ndarray:
    """Scale one image to [0, 1] by percentiles (and optionally local contrast).

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Any real or integer dtype. Not modified.
    low, high : float
        Percentiles mapped to 0 and 1; ``0 <= low < high <= 100``.
    local : bool
        Apply contrast-limited adaptive histogram equalization after the percentile scaling.
    kernel_size : int
        Tile size in pixels of the local equalization.

    Returns
    -------
    ndarray of shape (H, W), float32
        Values in [0, 1]; all zeros for a constant image.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"normalize expects a 2-D image, got shape {image.shape}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"normalize needs 0 <= low < high <= 100, got low={low}, high={high}")
    x = image.astype(np.float32, copy=True)
    if not np.all(np.isfinite(x)):
        raise ValueError("normalize: the image contains NaN or infinite values")
    lo, hi = np.percentile(x, [low, high])
    if hi - lo <= 1e-12 * max(1.0, abs(float(hi))):
        # Sparse bright objects on a flat background: fall back to the maximum.
        hi = float(x.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            return np.zeros(x.shape, np.float32)
    x -= np.float32(lo)
    x /= np.float32(hi - lo)
    np.clip(x, 0.0, 1.0, out=x)
    if local:
        from skimage.exposure import equalize_adapthist

        x = equalize_adapthist(x, kernel_size=kernel_size).astype(np.float32)
    return x


def combine_channels(
    images: Sequence[np.ndarray] | np.ndarray,
    weights: Sequence[float] | None = None,
    **norm_kwargs,
) -> np.ndarray:
    """Combine several channels of one role (e.g. two cytoplasm stains) into one image.

    Each channel is normalized with :func:`normalize` first, then averaged with ``weights``
    (equal by default) and rescaled to [0, 1].

    Parameters
    ----------
    images : sequence of ndarray of shape (H, W), or ndarray of shape (C, H, W)
    weights : sequence of C non-negative floats, optional
    **norm_kwargs
        Passed to :func:`normalize`.

    Returns
    -------
    ndarray of shape (H, W), float32
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("combine_channels needs at least one channel")
    shape = np.shape(images[0])
    for i, im in enumerate(images):
        if np.shape(im) != shape or len(shape) != 2:
            raise ValueError(
                f"combine_channels: channel {i} has shape {np.shape(im)}, expected 2-D {shape}"
            )
    w = np.ones(len(images)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(images),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"combine_channels: weights must be {len(images)} non-negative numbers with a "
            f"positive sum, got {weights!r}"
        )
    out = np.zeros(shape, np.float32)
    for wi, im in zip(w / w.sum(), images, strict=True):
        if wi > 0:
            out += np.float32(wi) * normalize(im, **norm_kwargs)
    top = float(out.max())
    return out / np.float32(top) if top > 0 else out


def prepare_input(
    nuclear: np.ndarray,
    cytoplasm: np.ndarray | None = None,
    **norm_kwargs,
) -> np.ndarray:
    """Stack the normalized nuclear and cytoplasm channels as the network's input.

    Parameters
    ----------
    nuclear : ndarray of shape (H, W)
    cytoplasm : ndarray of shape (H, W), optional
        ``None`` for nuclei-only assays: the second channel is then all zeros (the network is
        trained with such inputs too).
    **norm_kwargs
        Passed to :func:`normalize` (``low``, ``high``, ``local``, ``kernel_size``).

    Returns
    -------
    ndarray of shape (2, H, W), float32
    """
    nuclear = np.asarray(nuclear)
    if nuclear.ndim != 2:
        raise ValueError(f"prepare_input: nuclear image must be 2-D, got shape {nuclear.shape}")
    nuc = normalize(nuclear, **norm_kwargs)
    if cytoplasm is None:
        cyto = np.zeros_like(nuc)
    else:
        cytoplasm = np.asarray(cytoplasm)
        if cytoplasm.shape != nuclear.shape:
            raise ValueError(
                f"prepare_input: cytoplasm shape {cytoplasm.shape} differs from nuclear "
                f"shape {nuclear.shape}"
            )
        cyto = normalize(cytoplasm, **norm_kwargs)
    return np.stack([nuc, cyto]).astype(np.float32, copy=False)


def _norm_kwargs() -> dict[str, Any]:
    """The default normalization settings, as keyword arguments of :func:`normalize`."""
    return {k: DEFAULT_NORMALIZATION[k] for k in ("low", "high", "local", "kernel_size")}


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """The last two axes of ``shape`` scaled by ``factor``, rounded, at least 1."""
    h, w = shape[-2:]
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def resize_float(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float stack ``(C, H, W)`` to ``(C, *shape)`` (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    if stack.shape[-2:] == tuple(shape):
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    shrink = shape[0] < stack.shape[-2] or shape[1] < stack.shape[-1]
    out = F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy()


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Rescale a float image (H, W) or stack (C, H, W) by ``factor`` with :func:`resize_float`.

    Returns a float32 copy of the input's layout, of shape :func:`scaled_shape`.
    """
    image = np.asarray(image)
    stack = image if image.ndim == 3 else image[None]
    out = resize_float(stack.astype(np.float32), scaled_shape(image.shape, factor))
    out = np.array(out, dtype=np.float32)
    return out if image.ndim == 3 else out[0]


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image ``(h, w)`` to ``shape`` (pixel centres)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * (h / shape[0])).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * (w / shape[1])).astype(np.intp), w - 1)
    return labels[rows[:, None], cols[None, :]]
