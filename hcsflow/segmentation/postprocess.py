"""Deep-watershed post-processing: network maps -> nuclear and whole-cell label images.

The network predicts, for nuclei and for whole cells, an *inner distance* (high at object
centres, falling towards the boundary), an *outer distance* and a *foreground* probability
(Greenwald et al. 2022). Instances are recovered as follows:

1. **Foreground.** ``fg > fg_threshold``; holes smaller than ``max_hole_size`` are filled.
2. **Nuclear seeds.** Local maxima of the nuclear inner distance: pixels equal to the maximum of
   their ``(2 * min_distance + 1)`` square neighbourhood, above ``seed_threshold`` and in the
   foreground. Maxima that touch (a plateau) form one seed. This is the test that
   ``skimage.feature.peak_local_max`` applies, done with one separable maximum filter and one
   connected-component labelling, several times faster than h-maxima.
3. **Nuclei.** Marker watershed on the negated inner distance within the nuclear foreground.
   With ``merge_dynamic > 0``, two touching basins whose common border (the saddle) lies less
   than ``merge_dynamic`` below the lower of their two peaks are merged: a shallow secondary
   maximum inside one nucleus (texture, a nucleolus) is not a second nucleus, whereas two
   touching nuclei meet where the inner distance is low. This is the dynamics test of h-maxima,
   applied only to the few basins the watershed produced. Nuclei smaller than
   ``min_nucleus_size`` pixels are then removed.
4. **Cells.** The nuclei are the seeds of the cells: marker watershed on the negated cell inner
   distance within ``cell foreground OR nuclei`` (a nucleus always lies inside its cell), so
   every cell carries the label of its nucleus and vice versa.

Objects that do not pair up follow one documented rule and are counted in :class:`PostStats`:

- a **nucleus outside the cells** -- less than ``min_nucleus_in_cell`` of its area in the cell
  foreground -- is debris or a missed cell; it is removed (``nuclei_outside_cells``);
- a **cell without a nucleus** -- a connected part of the cell foreground of at least
  ``min_cell_size`` pixels that contains no kept nucleus -- is removed
  (``cells_without_nucleus``). An anucleate region *touching* a nucleated cell cannot be told
  apart from it by the watershed and is merged into that cell.

Labels are consecutive ``1..N`` in raster order of the seeds, the same in the nuclear and the
cell image. Everything is vectorised (filters, labelling, ``bincount``); there is no loop over
objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import remove_small_holes
from skimage.segmentation import watershed

#: Order of the network's output maps.
HEADS = ("nuc_inner", "nuc_outer", "nuc_fg", "cell_inner", "cell_outer", "cell_fg")

_STRUCT8 = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessParams:
    """Parameters of :func:`deep_watershed`; sizes in pixels of the maps.

    The defaults were chosen with ``benchmarks/tune_inference.py watershed`` on validation data
    (simulated fields and DSB2018 training images, never the benchmark's test data), for the
    shipped model's resolution, at which a typical nucleus is about 18 pixels across.

    Attributes
    ----------
    fg_threshold : float
        Foreground probability above which a pixel belongs to an object.
    seed_threshold : float
        Minimum inner-distance value of a seed.
    min_distance : int
        Half-size of the neighbourhood in which a seed must be the maximum (pixels).
    seed_smoothing : float
        Standard deviation (pixels) of the Gaussian applied to the inner distance before its
        maxima are sought, so that a ridge or a flat top gives one seed (0: none).
    min_nucleus_size : int
        Nuclei with fewer pixels are removed.
    min_cell_size : int
        Smallest anucleate foreground region counted as a cell without nucleus.
    max_hole_size : int
        Holes of the foreground up to this many pixels are filled.
    min_nucleus_in_cell : float
        Fraction of a nucleus's area that must lie in the cell foreground for it to be kept.
    min_contrast : float
        When the nuclear image is given, a nucleus whose mean intensity exceeds the mean of the
        background ring around it by less than this many noise standard deviations is removed
        (0: no test).
    ring_width : int
        Width in pixels of that background ring.
    merge_dynamic : float
        Touching nuclear basins are merged when their saddle lies less than this below the
        lower of their peaks, in units of the (smoothed) inner distance, whose object peaks are
        1 (0: no merging).
    """

    fg_threshold: float = 0.4
    seed_threshold: float = 0.1
    min_distance: int = 9
    seed_smoothing: float = 2.0
    min_nucleus_size: int = 20
    min_cell_size: int = 40
    max_hole_size: int = 64
    min_nucleus_in_cell: float = 0.5
    min_contrast: float = 1.0
    ring_width: int = 3
    merge_dynamic: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fg_threshold < 1.0:
            raise ValueError(f"fg_threshold must lie in (0, 1), got {self.fg_threshold}")
        if self.min_distance < 1:
            raise ValueError(f"min_distance must be >= 1 pixel, got {self.min_distance}")
        for name in ("min_nucleus_size", "min_cell_size", "max_hole_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.merge_dynamic <= 1.0:
            raise ValueError(f"merge_dynamic must lie in [0, 1], got {self.merge_dynamic}")
        if not 0.0 <= self.min_nucleus_in_cell <= 1.0:
            raise ValueError(
                f"min_nucleus_in_cell must lie in [0, 1], got {self.min_nucleus_in_cell}"
            )


@dataclass
class PostStats:
    """Counts of one field's post-processing.

    Attributes
    ----------
    n_nuclei, n_cells : int
        Objects kept (equal: every cell has exactly one nucleus).
    nuclei_outside_cells : int
        Nuclei removed because they lie mostly outside the cell foreground.
    cells_without_nucleus : int
        Anucleate cell-foreground regions removed.
    small_nuclei : int
        Nuclei removed because they are smaller than ``min_nucleus_size``.
    dim_nuclei : int
        Nuclei removed because they are not brighter than their surroundings.
    """

    n_nuclei: int = 0
    n_cells: int = 0
    nuclei_outside_cells: int = 0
    cells_without_nucleus: int = 0
    small_nuclei: int = 0
    dim_nuclei: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def find_seeds(
    inner: np.ndarray, mask: np.ndarray, min_distance: int, threshold: float
) -> tuple[np.ndarray, int]:
    """Label the local maxima of an inner-distance map.

    Parameters
    ----------
    inner : ndarray of float, shape (H, W)
        Inner-distance map.
    mask : ndarray of bool, shape (H, W)
        Where seeds may lie.
    min_distance : int
        A seed is the maximum of its ``(2 * min_distance + 1)`` square neighbourhood.
    threshold : float
        Minimum value of a seed.

    Returns
    -------
    seeds : ndarray of int32, shape (H, W)
        Seeds labelled ``1..n`` (touching maxima form one seed).
    n : int
        Number of seeds.
    """
    size = 2 * int(min_distance) + 1
    peak = ndi.maximum_filter(inner, size=size, mode="nearest")
    is_max = (inner >= peak) & (inner > threshold) & mask
    seeds, n = ndi.label(is_max, structure=_STRUCT8)
    return seeds.astype(np.int32, copy=False), int(n)


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the labels present in ``labels`` to ``1..N`` keeping their order.

    Returns the new image and the lookup table ``old -> new`` (0 for absent labels).
    """
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.zeros(present.size, dtype=np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels], lut


def _remove_labels(labels: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Set to 0 the labels flagged by the boolean table ``drop`` (indexed by label)."""
    if not drop.any():
        return labels
    keep = ~drop
    keep[0] = True
    return np.where(keep[labels], labels, 0)


def merge_shallow_basins(labels: np.ndarray, height: np.ndarray, dynamic: float) -> np.ndarray:
    """Merge touching basins separated by a saddle less than ``dynamic`` below a peak.

    For every pair of 4-adjacent labels the saddle is the highest value, along their common
    border, of the lower of the two sides; the pair is joined when
    ``min(peak_a, peak_b) - saddle < dynamic``. Joins are transitive (connected components of
    the graph of joined pairs).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Basins ``1..n`` (0: background), e.g. from a marker watershed on ``-height``.
    height : ndarray of float, shape (H, W)
        The map whose maxima seeded the basins.
    dynamic : float
        Minimum depth of the saddle below the lower peak for two basins to stay apart.

    Returns
    -------
    ndarray of int32, shape (H, W)
        Labels ``1..m`` (m <= n) in the order of each group's first basin; 0 stays 0.
    """
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    if dynamic <= 0 or n < 2:
        return labels.astype(np.int32, copy=False)
    a_parts, b_parts, v_parts = [], [], []
    for sl_a, sl_b in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        la, lb = labels[sl_a], labels[sl_b]
        border = (la != lb) & (la > 0) & (lb > 0)
        a_parts.append(la[border])
        b_parts.append(lb[border])
        v_parts.append(np.minimum(height[sl_a][border], height[sl_b][border]))
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    if a.size == 0:
        return labels.astype(np.int32, copy=False)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * (n + 1) + hi
    pairs, inverse = np.unique(key, return_inverse=True)
    saddle = np.full(pairs.size, -np.inf)
    np.maximum.at(saddle, inverse, np.concatenate(v_parts).astype(np.float64))
    peak = np.full(n + 1, -np.inf)
    peak[1:] = ndi.maximum(height, labels, index=np.arange(1, n + 1))
    p_lo, p_hi = pairs // (n + 1), pairs % (n + 1)
    join = np.minimum(peak[p_lo], peak[p_hi]) - saddle < dynamic
    if not join.any():
        return labels.astype(np.int32, copy=False)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(int(join.sum())), (p_lo[join], p_hi[join])), shape=(n + 1, n + 1))
    _, group = connected_components(graph, directed=False)
    # number the groups 1..m in the order of their first basin; background stays 0
    _, first, inv = np.unique(group[1:], return_index=True, return_inverse=True)
    new_id = np.empty(first.size, np.int64)
    new_id[np.argsort(first)] = np.arange(1, first.size + 1)
    lut = np.zeros(n + 1, np.int64)
    lut[1:] = new_id[inv]
    return lut[labels].astype(np.int32, copy=False)


def nuclei_from_maps(
    inner: np.ndarray, fg: np.ndarray, params: PostprocessParams
) -> tuple[np.ndarray, int]:
    """Nuclear instances from the nuclear inner-distance and foreground maps.

    Parameters
    ----------
    inner, fg : ndarray of float, shape (H, W)
        Inner distance and foreground probability.
    params : PostprocessParams

    Returns
    -------
    nuclei : ndarray of int32, shape (H, W)
        Labels ``1..N``.
    small : int
        Number of nuclei removed for being smaller than ``min_nucleus_size``.
    """
    mask = fg > params.fg_threshold
    if params.max_hole_size > 0:
        mask = remove_small_holes(mask, max_size=params.max_hole_size)
    peaks = ndi.gaussian_filter(inner, params.seed_smoothing) if params.seed_smoothing else inner
    seeds, n = find_seeds(peaks, mask, params.min_distance, params.seed_threshold)
    if n == 0:
        return np.zeros(inner.shape, np.int32), 0
    nuclei = watershed(-inner, seeds, mask=mask)
    if params.merge_dynamic > 0:
        nuclei = merge_shallow_basins(nuclei, peaks, params.merge_dynamic)
        n = int(nuclei.max())
    area = np.bincount(nuclei.ravel(), minlength=n + 1)
    small = area < params.min_nucleus_size
    small[0] = False
    n_small = int((small[1:] & (area[1:] > 0)).sum())
    nuclei = _remove_labels(nuclei, small)
    return nuclei.astype(np.int32, copy=False), n_small


def noise_sigma(image: np.ndarray) -> float:
    """Robust per-pixel noise level: scaled MAD of the image minus its 1-pixel Gaussian blur.

    The median is taken over every other row and column (a quarter of the pixels).
    """
    img = np.asarray(image, dtype=np.float32)
    hp = (img - ndi.gaussian_filter(img, 1.0))[::2, ::2]
    mad = float(np.median(np.abs(hp - np.median(hp))))
    return 1.4826 * mad


def remove_dim_nuclei(
    nuclei: np.ndarray, image: np.ndarray, min_contrast: float, ring_width: int
) -> tuple[np.ndarray, int]:
    """Remove nuclei that are not brighter than the background ring around them.

    Contrast of nucleus ``k`` = (mean of ``image`` over ``k`` - mean over the background pixels
    within ``ring_width`` of ``k``) / :func:`noise_sigma`. Nuclei without background around
    them (inside a clump) are kept. This removes objects a network finds in camera noise or in
    smooth background (an empty field normalized to [0, 1] looks like texture).

    Parameters
    ----------
    nuclei : ndarray of int, shape (H, W)
    image : ndarray of float, shape (H, W)
        The nuclear channel at the same resolution.
    min_contrast : float
        In noise standard deviations.
    ring_width : int
        Pixels.

    Returns
    -------
    nuclei : ndarray, shape (H, W)
        Without the dim nuclei (labels not renumbered).
    removed : int
    """
    n = int(nuclei.max()) if nuclei.size else 0
    if n == 0 or min_contrast <= 0:
        return nuclei, 0
    img = np.asarray(image, dtype=np.float64)
    sigma = noise_sigma(img)
    if not sigma > 0:
        return nuclei, 0
    area = np.bincount(nuclei.ravel(), minlength=n + 1)
    inside = np.bincount(nuclei.ravel(), weights=img.ravel(), minlength=n + 1)
    # background pixels within ring_width (chessboard distance) of a nucleus; where two nuclei
    # are that close, the ring pixel goes to the higher label
    grown = ndi.maximum_filter(nuclei, size=2 * int(ring_width) + 1)
    ring = np.where(nuclei == 0, grown, 0).ravel()
    ring_area = np.bincount(ring, minlength=n + 1)
    ring_sum = np.bincount(ring, weights=img.ravel(), minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        contrast = (inside / area - ring_sum / ring_area) / sigma
    dim = (area > 0) & (ring_area > 0) & (contrast < min_contrast)
    dim[0] = False
    return _remove_labels(nuclei, dim), int(dim.sum())


def cells_from_nuclei(
    nuclei: np.ndarray,
    cell_inner: np.ndarray,
    cell_fg: np.ndarray,
    params: PostprocessParams,
) -> tuple[np.ndarray, np.ndarray, PostStats]:
    """Whole cells grown from the nuclei over the cell maps (nuclei are the seeds).

    Parameters
    ----------
    nuclei : ndarray of int, shape (H, W)
        Nuclear labels.
    cell_inner, cell_fg : ndarray of float, shape (H, W)
        Cell inner distance and foreground probability.
    params : PostprocessParams

    Returns
    -------
    nuclei : ndarray of uint32, shape (H, W)
        Kept nuclei, labels ``1..N``.
    cells : ndarray of uint32, shape (H, W)
        Cells, cell ``k`` contains nucleus ``k``.
    stats : PostStats
        Counts (``small_nuclei`` left at 0 for the caller to fill in).
    """
    stats = PostStats()
    fg = cell_fg > params.fg_threshold
    if params.max_hole_size > 0:
        fg = remove_small_holes(fg, max_size=params.max_hole_size)
    nmax = int(nuclei.max()) if nuclei.size else 0
    if nmax:
        area = np.bincount(nuclei.ravel(), minlength=nmax + 1)
        inside = np.bincount(nuclei.ravel(), weights=fg.ravel(), minlength=nmax + 1)
        present = area > 0
        present[0] = False
        outside = present & (inside < params.min_nucleus_in_cell * area)
        stats.nuclei_outside_cells = int(outside.sum())
        nuclei = _remove_labels(nuclei, outside)
    nuclei, _ = relabel_sequential(nuclei)
    n = int(nuclei.max()) if nuclei.size else 0
    mask = fg | (nuclei > 0)
    if n:
        cells = watershed(-cell_inner, nuclei, mask=mask)
    else:
        cells = np.zeros(nuclei.shape, np.int64)
    # anucleate parts of the foreground: connected regions the watershed did not reach
    orphan, n_orphan = ndi.label(mask & (cells == 0), structure=_STRUCT8)
    if n_orphan:
        size = np.bincount(orphan.ravel(), minlength=n_orphan + 1)[1:]
        stats.cells_without_nucleus = int((size >= params.min_cell_size).sum())
    stats.n_nuclei = stats.n_cells = n
    return nuclei.astype(np.uint32), cells.astype(np.uint32), stats


def deep_watershed(
    maps: np.ndarray,
    params: PostprocessParams | None = None,
    nuclear: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, PostStats]:
    """Nuclear and whole-cell instances from the six network maps.

    Parameters
    ----------
    maps : ndarray of float, shape (6, H, W)
        ``nuc_inner, nuc_outer, nuc_fg, cell_inner, cell_outer, cell_fg`` (see :data:`HEADS`);
        foreground maps are probabilities in [0, 1]. The outer distances are not used by the
        watershed (the inner distances carry the seeds and the basins).
    params : PostprocessParams, optional
    nuclear : ndarray of float, shape (H, W), optional
        The nuclear input image; when given, nuclei not brighter than their surroundings are
        removed (:func:`remove_dim_nuclei`).

    Returns
    -------
    nuclei, cells : ndarray of uint32, shape (H, W)
        Label images; cell ``k`` contains nucleus ``k``.
    stats : PostStats
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != len(HEADS):
        raise ValueError(f"maps must have shape (6, H, W) ordered as {HEADS}, got {maps.shape}")
    params = params or PostprocessParams()
    nuclei, n_small = nuclei_from_maps(maps[0], maps[2], params)
    n_dim = 0
    if nuclear is not None:
        nuclei, n_dim = remove_dim_nuclei(nuclei, nuclear, params.min_contrast, params.ring_width)
    nuclei, cells, stats = cells_from_nuclei(nuclei, maps[3], maps[5], params)
    stats.small_nuclei = n_small
    stats.dim_nuclei = n_dim
    return nuclei, cells, stats


def nuclei_only(
    inner: np.ndarray,
    fg: np.ndarray,
    params: PostprocessParams,
    grow: float,
    nuclear: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, PostStats]:
    """Nuclei from the nuclear maps and cells as the nuclei grown by ``grow`` pixels.

    Used when there is no cytoplasm channel: the cell maps are then meaningless.

    Parameters
    ----------
    inner, fg : ndarray of float, shape (H, W)
        Nuclear inner distance and foreground probability.
    params : PostprocessParams
    grow : float
        Distance in pixels by which each nucleus is expanded (without overlap) into a cell.
    nuclear : ndarray of float, shape (H, W), optional
        The nuclear input image, for :func:`remove_dim_nuclei`.
    """
    nuclei, n_small = nuclei_from_maps(inner, fg, params)
    n_dim = 0
    if nuclear is not None:
        nuclei, n_dim = remove_dim_nuclei(nuclei, nuclear, params.min_contrast, params.ring_width)
    nuclei, _ = relabel_sequential(nuclei)
    cells = grow_labels(nuclei, grow)
    n = int(nuclei.max()) if nuclei.size else 0
    stats = PostStats(n_nuclei=n, n_cells=n, small_nuclei=n_small, dim_nuclei=n_dim)
    return nuclei.astype(np.uint32), cells.astype(np.uint32), stats


def grow_labels(labels: np.ndarray, distance: float) -> np.ndarray:
    """Expand each label by ``distance`` pixels without overlapping its neighbours.

    The same as ``skimage.segmentation.expand_labels`` (nearest label within ``distance``),
    computed with one Euclidean distance transform.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    distance : float
        Pixels; 0 returns a copy.
    """
    if distance <= 0 or not labels.any():
        return labels.copy()
    dist, (ri, ci) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    grown = labels[ri, ci]
    return np.where(dist <= distance, grown, 0).astype(labels.dtype, copy=False)
