"""Training targets of the segmentation network, computed from label masks.

For each compartment (nuclei, whole cells) three maps are produced; see
:mod:`hcsflow.segmentation.model` for the channel order:

``inner``
    Euclidean distance of each object pixel to the nearest pixel outside the object
    (background or another object), divided by the object's maximum: 1 at the object's
    innermost point, falling to ``1 / max`` at its rim, 0 on background. Per-object
    normalization (as Mesmer's inner distance) makes small and large objects equally peaked, so
    the maxima of this map are the watershed seeds.
``outer``
    ``tanh(d / OUTER_SCALE)`` with the same distance ``d`` in pixels, not normalized: it carries
    absolute size and separates touching objects (it is ~0 on every border, including borders
    between two objects).
``fg``
    1 inside any object, 0 on background (the network outputs a logit).

``make_targets(nuclei, None)`` (nuclei-only annotations, e.g. DSB2018) fills the three cell
maps with NaN: NaN marks "not supervised", and the training loss ignores those pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixel scale of the outer distance: tanh(d / OUTER_SCALE).
OUTER_SCALE = 8.0


def object_distance(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each object pixel to the nearest pixel outside its own object.

    Parameters
    ----------
    labels : ndarray of shape (H, W), integer
        0 = background. The image border counts as outside.

    Returns
    -------
    dist : ndarray of shape (H, W), float32
        Distance in pixels (>= 1 inside objects, 0 on background).
    inner : ndarray of shape (H, W), float32
        ``dist`` divided by its maximum within each object.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    dist = np.zeros(labels.shape, np.float32)
    inner = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        sub = np.pad(labels[sl] == i, 1)
        d = ndi.distance_transform_edt(sub)[1:-1, 1:-1].astype(np.float32)
        obj = sub[1:-1, 1:-1]
        dist[sl][obj] = d[obj]
        inner[sl][obj] = d[obj] / d.max()
    return dist, inner


def _compartment(labels: np.ndarray) -> np.ndarray:
    dist, inner = object_distance(labels)
    outer = np.tanh(dist / OUTER_SCALE).astype(np.float32)
    return np.stack([inner, outer, (labels > 0).astype(np.float32)])


def make_targets(nuclei: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """Compute the six target maps from nuclear and whole-cell label masks.

    Parameters
    ----------
    nuclei : ndarray of shape (H, W), integer
        Nuclear labels, 0 = background.
    cells : ndarray of shape (H, W), integer, optional
        Whole-cell labels; ``None`` when only nuclei are annotated.

    Returns
    -------
    ndarray of shape (6, H, W), float32
        ``nuc_inner, nuc_outer, nuc_fg, cell_inner, cell_outer, cell_fg``; the cell maps are
        NaN (unsupervised) when ``cells`` is None.
    """
    nuclei = np.asarray(nuclei)
    if nuclei.ndim != 2 or not np.issubdtype(nuclei.dtype, np.integer):
        raise ValueError(
            f"nuclei must be a 2-D integer label image, got {nuclei.dtype} {nuclei.shape}"
        )
    out = np.full((6, *nuclei.shape), np.nan, np.float32)
    out[:3] = _compartment(nuclei)
    if cells is not None:
        cells = np.asarray(cells)
        if cells.shape != nuclei.shape or not np.issubdtype(cells.dtype, np.integer):
            raise ValueError(
                f"cells must be an integer label image of shape {nuclei.shape}, "
                f"got {cells.dtype} {cells.shape}"
            )
        out[3:] = _compartment(cells)
    return out


def supervised_heads(targets: np.ndarray) -> np.ndarray:
    """Which of the target maps are supervised (not NaN).

    Parameters
    ----------
    targets : ndarray of shape (6, H, W)

    Returns
    -------
    ndarray of shape (6,), bool
    """
    return ~np.isnan(np.asarray(targets)).reshape(len(targets), -1).all(axis=1)
