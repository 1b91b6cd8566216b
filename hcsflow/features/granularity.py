"""Granularity spectrum per object (CellProfiler 4 MeasureGranularity).

Method
------
CellProfiler's algorithm (Ravkin's granulometry by erosion + reconstruction), per channel:

1. **Subsample** the image by ``subsample_size`` (bilinear, ``scipy.ndimage.map_coordinates``
   ``order=1`` on the grid ``arange(0, H * subsample_size) / subsample_size``; with the default
   0.25 these are exact samples of every fourth pixel).
2. **Remove the background**: subsample that image again by ``image_sample_size``, open it
   (grey erosion then dilation by a disk of radius ``element_size``), interpolate the opening
   back to the subsampled grid with CellProfiler's scale ``(back - 1) / (new - 1)``, subtract it
   and clip negative values to 0.
3. **Granular spectrum**: erode the result ``spectrum_length`` times by the 4-connected unit
   disk; after erosion ``i`` reconstruct (grey reconstruction by dilation, 4-connected) under
   the background-free image, giving ``rec_i``.
4. **Per object**: ``rec_i`` is interpolated back to full resolution (bilinear, scale
   ``(new - 1) / (H - 1)``; a sample falling outside the subsampled grid is 0, as with
   ``map_coordinates(mode="constant")``) and averaged over the object's pixels, ``m_i``.
   With ``m_0`` the mean of the *original* image over the object and ``s = max(m_0, eps)``,
   ``Granularity_i = (m_{i-1} - m_i) * 100 / s``.

So ``Granularity_1`` also contains the background and whatever the subsampling lost: a flat,
non-zero image gives 100 at scale 1 and 0 above, exactly as in CellProfiler.

Columns are ``<Comp>_Granularity_<i>_<channel>``, ``i = 1..spectrum_length``, ordered by
compartment, channel, scale; NaN for an object absent from a compartment.

Implementation
--------------
Steps 1-3 depend on the channel only and run once per channel for all compartments, in
compiled kernels. The disk erosion/dilation is decomposed into rows of the disk (pixels
outside the image are ignored, which equals scikit-image's reflecting border for symmetric
convex footprints). The ``spectrum_length`` reconstructions share their mask, so its 4-connected
max-tree is built once per channel (pixels sorted once, then a union-find; Najman & Couprie
2006). Every erosion of the mask takes mask values only, so all images are handled as ranks
in that sort (int32), and the reconstruction of a seed at a pixel is the highest level whose
connected component around the pixel contains a seed value at least as high: the maximum,
over the pixel's max-tree ancestors, of ``min(level, largest seed in the subtree)``. That is
two linear passes over the tree for all scales together -- exact, and identical to
``skimage.morphology.reconstruction``. Step 4 is linear in ``rec_i``: the bilinear weights of
all pixels of an object are summed, once per compartment, into a small dense block over the
object's bounding box in the subsampled grid, and each ``m_i`` is one dot product of that block
with ``rec_i``. The results equal CellProfiler's up to floating-point summation order. The image
is processed in float64 (CellProfiler's illumination-corrected images are float64).

Deliberate differences
----------------------
None in the computation. CellProfiler's subsampled grid size is ``ceil(H * subsample_size)``
and its scale factors use the unrounded ``H * subsample_size`` (as here); cp_measure truncates
the size to an integer, which differs only when ``H * subsample_size`` is not an integer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from hcsflow.features._objects import COMPARTMENTS, Features, check_compartments

#: The 4-connected neighbours (dy, dx).
_DY = np.array([-1, 1, 0, 0], dtype=np.int64)
_DX = np.array([0, 0, -1, 1], dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _resample(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` on the grid ``rows x cols`` (map_coordinates order=1).

    A coordinate outside ``[0, n - 1]`` gives 0 (``mode="constant"``, no interpolation
    beyond the edge).
    """
    h, w = img.shape
    out = np.zeros((rows.size, cols.size))
    c0 = np.empty(cols.size, dtype=np.int64)
    c1 = np.empty(cols.size, dtype=np.int64)
    fc = np.empty(cols.size)
    cok = np.empty(cols.size, dtype=np.bool_)
    for j in range(cols.size):
        x = cols[j]
        cok[j] = x >= 0.0 and x <= w - 1
        b = min(int(np.floor(x)), w - 1) if cok[j] else 0
        c0[j] = b
        c1[j] = min(b + 1, w - 1)
        fc[j] = x - b if cok[j] else 0.0
    for i in range(rows.size):
        y = rows[i]
        if not (y >= 0.0 and y <= h - 1):
            continue
        a = min(int(np.floor(y)), h - 1)
        a1 = min(a + 1, h - 1)
        fr = y - a
        for j in range(cols.size):
            if not cok[j]:
                continue
            f = fc[j]
            top = img[a, c0[j]] * (1.0 - f) + img[a, c1[j]] * f
            bottom = img[a1, c0[j]] * (1.0 - f) + img[a1, c1[j]] * f
            out[i, j] = top * (1.0 - fr) + bottom * fr
    return out


@numba.njit(cache=True, nogil=True)
def _disk_filter(img: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """Grey erosion (min) or dilation (max) by ``disk(radius)``, ignoring out-of-image pixels.

    The disk is decomposed into rows: for each row offset ``dy`` the horizontal half-width is
    ``floor(sqrt(radius^2 - dy^2))``; horizontal extrema of growing half-width are built one
    pixel at a time and combined vertically. Same result as a direct filter (and as
    scikit-image's, whose reflecting border changes nothing for a symmetric convex footprint).
    """
    h, w = img.shape
    sign = 1.0 if dilate else -1.0  # work on maxima of sign * img
    halfw = np.empty(radius + 1, dtype=np.int64)
    for dy in range(radius + 1):
        a = 0
        while (a + 1) * (a + 1) + dy * dy <= radius * radius:
            a += 1
        halfw[dy] = a
    rows = np.empty((radius + 1, h, w))  # rows[a]: horizontal maximum over [j - a, j + a]
    for i in range(h):
        for j in range(w):
            rows[0, i, j] = sign * img[i, j]
    for a in range(1, radius + 1):
        for i in range(h):
            for j in range(w):
                m = rows[a - 1, i, j]
                if j > 0 and rows[a - 1, i, j - 1] > m:
                    m = rows[a - 1, i, j - 1]
                if j < w - 1 and rows[a - 1, i, j + 1] > m:
                    m = rows[a - 1, i, j + 1]
                rows[a, i, j] = m
    out = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            m = rows[halfw[0], i, j]
            for dy in range(1, radius + 1):
                a = halfw[dy]
                if i - dy >= 0 and rows[a, i - dy, j] > m:
                    m = rows[a, i - dy, j]
                if i + dy < h and rows[a, i + dy, j] > m:
                    m = rows[a, i + dy, j]
            out[i, j] = sign * m
    return out


@numba.njit(cache=True, nogil=True)
def _erode_cross(img: np.ndarray) -> np.ndarray:
    """Grey erosion by the 4-connected unit disk (``disk(1)``), ignoring the outside."""
    h, w = img.shape
    out = np.empty_like(img)
    for i in range(h):
        for j in range(w):
            m = img[i, j]
            if i > 0 and img[i - 1, j] < m:
                m = img[i - 1, j]
            if i < h - 1 and img[i + 1, j] < m:
                m = img[i + 1, j]
            if j > 0 and img[i, j - 1] < m:
                m = img[i, j - 1]
            if j < w - 1 and img[i, j + 1] < m:
                m = img[i, j + 1]
            out[i, j] = m
    return out


@numba.njit(cache=True, nogil=True)
def _max_tree(shape: tuple[int, int], order: np.ndarray) -> np.ndarray:
    """Parents of the 4-connected max-tree of an image, in rank space.

    ``order`` sorts the flat image ascending; node ``t`` is the pixel ``order[t]``. Pixels are
    merged in descending order (Najman & Couprie 2006: a union-find by rank over the merged
    sets, each remembering its lowest node), so every node's parent has a lower rank and a
    lower or equal value. Node 0 is the root and its own parent.
    """
    h, w = shape
    size = h * w
    rank = np.empty(size, dtype=np.int64)
    for t in range(size):
        rank[order[t]] = t
    parent = np.empty(size, dtype=np.int64)
    zpar = np.empty(size, dtype=np.int64)
    zrank = np.zeros(size, dtype=np.int32)
    lowest = np.empty(size, dtype=np.int64)
    for t in range(size - 1, -1, -1):
        parent[t] = t
        zpar[t] = t
        lowest[t] = t
        root = t
        p = order[t]
        i = p // w
        j = p - i * w
        for d in range(4):
            y = i + _DY[d]
            x = j + _DX[d]
            if y < 0 or y >= h or x < 0 or x >= w:
                continue
            u = rank[y * w + x]
            if u < t:  # not merged yet
                continue
            other = u
            while zpar[other] != other:
                other = zpar[other]
            while zpar[u] != other:  # path compression
                nxt = zpar[u]
                zpar[u] = other
                u = nxt
            if other == root:
                continue
            parent[lowest[other]] = t
            if zrank[other] > zrank[root]:
                other, root = root, other
            elif zrank[other] == zrank[root]:
                zrank[root] += 1
            zpar[other] = root
            lowest[root] = t
    return parent


@numba.njit(cache=True, nogil=True)
def _reconstruct_stack(seeds: np.ndarray, parent: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Grey reconstructions by dilation of several seeds under one mask, 4-connected.

    Everything is in rank space: a value is represented by its rank in the ascending sort
    ``order`` of the mask (every seed here is an erosion of the mask, so its values are mask
    values; among equal values any rank stands for the same value), node ``t`` of the
    max-tree is the pixel ``order[t]`` at level ``t``. The reconstruction at a pixel is the
    highest level ``t`` at which its connected component of ``mask >= t`` holds a seed value
    ``>= t``; with ``S`` the largest seed in a node's subtree, that is the maximum of
    ``min(level, S)`` over the node's ancestors: two linear passes over the tree, for all
    seeds together so that each (random) access to a parent serves every seed. Same result,
    per seed, as ``skimage.morphology.reconstruction(seed, mask, footprint=disk(1))``.

    Parameters
    ----------
    seeds : ndarray of int32, shape (H * W, L)
        L seed images as mask ranks, pixel-major; none may exceed the mask.
    parent : ndarray of int64, shape (H * W,)
        Max-tree parents from :func:`_max_tree`.
    order : ndarray of int64, shape (H * W,)
        Ascending sort of the mask.

    Returns
    -------
    ndarray of int32, shape (H * W, L)
        The reconstructions as mask ranks, pixel-major.
    """
    size, nseed = seeds.shape
    best = np.empty((size, nseed), dtype=np.int32)
    for t in range(size):
        p = order[t]
        for s in range(nseed):
            best[t, s] = min(seeds[p, s], t)
    for t in range(size - 1, 0, -1):  # children before parents: subtree maxima
        q = parent[t]
        for s in range(nseed):
            best[q, s] = max(best[q, s], best[t, s])
    out = np.empty((size, nseed), dtype=np.int32)
    for t in range(size):  # parents before children; best becomes the reconstruction
        q = parent[t]
        p = order[t]
        for s in range(nseed):
            v = min(t, best[t, s])
            if t > 0:
                v = max(v, best[q, s])
            best[t, s] = v
            out[p, s] = v
    return out


@numba.njit(cache=True, nogil=True)
def _spectrum_ranks(pix: np.ndarray, order: np.ndarray, length: int) -> np.ndarray:
    """``rec_i`` for i = 1..length as ranks of ``pix`` (ascending ``order``), shape (h, w, L)."""
    h, w = pix.shape
    size = h * w
    parent = _max_tree((h, w), order)
    ero = np.empty(size, dtype=np.int32)
    for t in range(size):
        ero[order[t]] = t
    ero2 = ero.reshape(h, w)
    seeds = np.empty((size, length), dtype=np.int32)
    for s in range(length):
        ero2 = _erode_cross(ero2)
        seeds[:, s] = ero2.ravel()
    return _reconstruct_stack(seeds, parent, order).reshape(h, w, length)


@numba.njit(cache=True, nogil=True)
def _axis_weights(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower neighbour, its upper neighbour and the fraction of each coordinate.

    A coordinate outside ``[0, n - 1]`` gets index -1 (weight 0 everywhere).
    """
    lo = np.empty(coords.size, dtype=np.int64)
    hi = np.empty(coords.size, dtype=np.int64)
    fr = np.empty(coords.size)
    for t in range(coords.size):
        x = coords[t]
        if x >= 0.0 and x <= n - 1:
            a = min(int(np.floor(x)), n - 1)
            lo[t] = a
            hi[t] = min(a + 1, n - 1)
            fr[t] = x - a
        else:
            lo[t] = -1
            hi[t] = -1
            fr[t] = 0.0
    return lo, hi, fr


@numba.njit(cache=True, nogil=True)
def _object_operator(
    labels: np.ndarray, n: int, rows: np.ndarray, cols: np.ndarray, hs: int, ws: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-object blocks of summed bilinear weights over the subsampled grid.

    Returns ``bbox`` (n, 4) = (row0, row1, col0, col1) inclusive in the subsampled grid
    (row0 > row1 for an object without in-grid weight), ``start`` (n + 1,) offsets of each
    object's row-major block in ``weights``, and ``weights``. The mean of the bilinear
    upsampling of ``rec`` over object ``k`` is ``sum(block_k * rec[bbox_k]) / count_k``.
    """
    h, w = labels.shape
    rlo, rhi, rfr = _axis_weights(rows, hs)
    clo, chi, cfr = _axis_weights(cols, ws)
    bbox = np.empty((n, 4), dtype=np.int64)
    bbox[:, 0] = hs
    bbox[:, 1] = -1
    bbox[:, 2] = ws
    bbox[:, 3] = -1
    for i in range(h):
        if rlo[i] < 0:
            continue
        for j in range(w):
            k = labels[i, j]
            if k == 0 or clo[j] < 0:
                continue
            b = bbox[k - 1]
            b[0] = min(b[0], rlo[i])
            b[1] = max(b[1], rhi[i])
            b[2] = min(b[2], clo[j])
            b[3] = max(b[3], chi[j])
    start = np.zeros(n + 1, dtype=np.int64)
    for k in range(n):
        size = 0
        if bbox[k, 1] >= bbox[k, 0]:
            size = (bbox[k, 1] - bbox[k, 0] + 1) * (bbox[k, 3] - bbox[k, 2] + 1)
        start[k + 1] = start[k] + size
    weights = np.zeros(start[n])
    for i in range(h):
        if rlo[i] < 0:
            continue
        fr = rfr[i]
        for j in range(w):
            k = labels[i, j]
            if k == 0 or clo[j] < 0:
                continue
            b = bbox[k - 1]
            bw = b[3] - b[2] + 1
            base = start[k - 1]
            r0 = rlo[i] - b[0]
            r1 = rhi[i] - b[0]
            c0 = clo[j] - b[2]
            c1 = chi[j] - b[2]
            fc = cfr[j]
            weights[base + r0 * bw + c0] += (1.0 - fr) * (1.0 - fc)
            weights[base + r0 * bw + c1] += (1.0 - fr) * fc
            weights[base + r1 * bw + c0] += fr * (1.0 - fc)
            weights[base + r1 * bw + c1] += fr * fc
    return bbox, start, weights


@numba.njit(cache=True, nogil=True)
def _apply_operator(
    bbox: np.ndarray, start: np.ndarray, weights: np.ndarray, stack: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Per-object weighted sums of each image of ``stack`` (h, w, L); returns (n, L).

    ``stack`` holds ranks; ``values[rank]`` is the pixel value.
    """
    n = bbox.shape[0]
    length = stack.shape[2]
    out = np.zeros((n, length))
    for k in range(n):
        r0, r1, c0, c1 = bbox[k, 0], bbox[k, 1], bbox[k, 2], bbox[k, 3]
        t = start[k]
        for a in range(r0, r1 + 1):
            for b in range(c0, c1 + 1):
                wgt = weights[t]
                t += 1
                if wgt != 0.0:
                    for s in range(length):
                        out[k, s] += wgt * values[stack[a, b, s]]
    return out


@numba.njit(cache=True, nogil=True)
def _label_sums(labels: np.ndarray, image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts (n, 1) and per-channel sums (n, C) of objects ``1..n`` of ``image`` (C, H, W)."""
    nch = image.shape[0]
    h, w = labels.shape
    counts = np.zeros((n, 1))
    sums = np.zeros((n, nch))
    for i in range(h):
        for j in range(w):
            k = labels[i, j]
            if k == 0:
                continue
            counts[k - 1, 0] += 1.0
            for c in range(nch):
                sums[k - 1, c] += image[c, i, j]
    return counts, sums


def _shrink(
    img: np.ndarray, factor: float, shape: tuple[float, float] | None = None
) -> tuple[np.ndarray, float, float]:
    """CellProfiler's resize of an (H, W) image by ``factor`` (>= 1: unchanged, as float64).

    ``shape`` is the image's shape as CellProfiler counts it (fractional after an earlier
    resize; default ``img.shape``). Returns the resized image and the new shape
    ``shape * factor``, which the later steps use.
    """
    h, w = img.shape if shape is None else shape
    if factor >= 1:
        return img.astype(np.float64), float(h), float(w)
    new_h, new_w = h * factor, w * factor
    rows = np.arange(0, new_h, dtype=np.float64) / factor
    cols = np.arange(0, new_w, dtype=np.float64) / factor
    return _resample(img, rows, cols), new_h, new_w


def _background_free(
    channel: np.ndarray, subsample_size: float, image_sample_size: float, element_size: int
) -> tuple[np.ndarray, float, float]:
    """Steps 1-2: the subsampled, background-subtracted image and CellProfiler's new shape."""
    img = np.ascontiguousarray(channel)
    if img.dtype != np.float32:
        img = img.astype(np.float64)
    pixels, new_h, new_w = _shrink(img, subsample_size)
    back, back_h, back_w = _shrink(pixels, image_sample_size, (new_h, new_w))
    back = _disk_filter(_disk_filter(back, element_size, False), element_size, True)
    if image_sample_size < 1:
        back = _resample(
            back,
            np.arange(0, new_h, dtype=np.float64) * (float(back_h - 1) / float(new_h - 1)),
            np.arange(0, new_w, dtype=np.float64) * (float(back_w - 1) / float(new_w - 1)),
        )
    pixels = pixels - back
    pixels[pixels < 0] = 0
    return pixels, new_h, new_w


def measure_granularity(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    spectrum_length: int = 16,
) -> Features:
    """CellProfiler's MeasureGranularity spectrum for every compartment and channel.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Illumination-corrected channels in CellProfiler units.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Compartment name -> label image in which object ``k`` is output row ``k - 1``.
    n : int
        Number of rows (objects).
    channel_names : sequence of str
        C channel names used in the column names.
    subsample_size : float
        CellProfiler's "Subsampling factor for granularity measurements" (0, 1].
    image_sample_size : float
        CellProfiler's "Subsampling factor for background reduction" (0, 1].
    element_size : int
        Radius of the background-removal disk, in subsampled pixels.
    spectrum_length : int
        Number of scales ("Range of the granular spectrum").

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_Granularity_<i>_<ch>`` for ``i = 1..spectrum_length``, ordered by compartment,
        channel, scale. NaN for objects absent from a compartment.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(channel_names):
        raise ValueError(
            f"image must be (C, H, W) with C = {len(channel_names)} channels, got {image.shape}"
        )
    if not 0 < subsample_size <= 1 or not 0 < image_sample_size <= 1:
        raise ValueError("subsample_size and image_sample_size must be in (0, 1]")
    if int(element_size) != element_size or int(spectrum_length) != spectrum_length:
        raise ValueError("element_size and spectrum_length must be integers")
    element_size, spectrum_length = int(element_size), int(spectrum_length)
    if element_size < 1 or spectrum_length < 1:
        raise ValueError("element_size and spectrum_length must be >= 1")
    check_compartments(compartments, n)
    names = [c for c in COMPARTMENTS if c in compartments] + [
        c for c in compartments if c not in COMPARTMENTS
    ]
    h, w = image.shape[1:]
    new_h = h * subsample_size if subsample_size < 1 else float(h)
    new_w = w * subsample_size if subsample_size < 1 else float(w)
    # as cp_measure: no spectrum when subsampling leaves fewer than 2 samples along an axis
    degenerate = min(h, w, new_h, new_w) < 2
    out: Features = {}
    if n == 0 or degenerate:
        for comp in names:
            for ch in channel_names:
                for s in range(1, spectrum_length + 1):
                    out[f"{comp}_Granularity_{s}_{ch}"] = np.full(n, np.nan)
        return out

    hs, ws = len(np.arange(0, new_h)), len(np.arange(0, new_w))
    rows = np.arange(h, dtype=np.float64) * (float(new_h - 1) / float(h - 1))
    cols = np.arange(w, dtype=np.float64) * (float(new_w - 1) / float(w - 1))
    pixels_first = np.ascontiguousarray(image)
    if pixels_first.dtype != np.float32:
        pixels_first = pixels_first.astype(np.float64)
    operators = {}
    for comp in names:
        labels = np.ascontiguousarray(compartments[comp])
        if labels.shape != (h, w):
            raise ValueError(f"{comp} labels {labels.shape} do not match the image {image.shape}")
        counts, sums0 = _label_sums(labels, pixels_first, n)
        operators[comp] = (counts, sums0, _object_operator(labels, n, rows, cols, hs, ws))

    means: dict[tuple[str, int], np.ndarray] = {}
    for c in range(len(channel_names)):
        pixels, _, _ = _background_free(image[c], subsample_size, image_sample_size, element_size)
        flat = pixels.ravel()
        order = np.argsort(flat, kind="stable")
        stack = _spectrum_ranks(pixels, order, spectrum_length)
        values = flat[order]
        for comp in names:
            counts, sums0, (bbox, start, weights) = operators[comp]
            sums = _apply_operator(bbox, start, weights, stack, values)
            with np.errstate(invalid="ignore", divide="ignore"):
                means[comp, c] = np.concatenate([sums0[:, c : c + 1], sums], axis=1) / counts
    eps = np.finfo(float).eps
    for comp in names:
        for c, ch in enumerate(channel_names):
            m = means[comp, c]
            start_mean = np.maximum(m[:, 0], eps)
            gran = (m[:, :-1] - m[:, 1:]) * 100 / start_mean[:, None]
            for s in range(spectrum_length):
                out[f"{comp}_Granularity_{s + 1}_{ch}"] = np.ascontiguousarray(gran[:, s])
    return out
