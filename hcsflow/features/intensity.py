"""Intensity statistics per object (CellProfiler 4 MeasureObjectIntensity).

Method
------
For every compartment and channel, and every object ``k`` (row ``k - 1``), over the object's
pixels ``x_i`` at column ``X_i`` and row ``Y_i``:

* ``IntegratedIntensity`` ``sum x``; ``MeanIntensity``; ``StdIntensity`` (population, two-pass
  ``sqrt(mean((x - mean)^2))``); ``MinIntensity``; ``MaxIntensity``.
* The same five over the object's **edge** pixels (``...Edge``): CellProfiler's
  ``skimage.segmentation.find_boundaries(labels, mode="inner")`` on the compartment's label
  image, i.e. an object pixel with at least one 4-neighbour *inside the image* of a different
  label (background or another object). The image border itself is not an edge
  (scikit-image's morphology reflects at the border).
* ``LowerQuartileIntensity``, ``MedianIntensity``, ``UpperQuartileIntensity``: CellProfiler's own
  interpolation, not ``numpy.percentile``: with the object's values sorted ascending
  ``s_0..s_{n-1}``, the quantile ``q`` sits at position ``p = n q``, ``l = floor(p)``,
  ``f = p - l`` and is ``s_l (1 - f) + s_{l+1} f`` when ``l < n - 1``, else ``s_l``. This is
  cp_measure's ``legacy=True`` convention (its default ``legacy=False`` is ``numpy.percentile``'s
  ``(n - 1) q``, which CellProfiler never used). ``MADIntensity`` applies the same rule with
  ``q = 1/2`` (``1 / dimensions`` in CellProfiler, 2-D here) to ``|x - median|``.
* ``MassDisplacement``: distance between the binary centroid (mean X, Y) and the intensity
  centroid ``(sum X x / sum x, sum Y x / sum x)``.
* ``Location_CenterMassIntensity_X/_Y/_Z`` (the intensity centroid) and
  ``Location_MaxIntensity_X/_Y/_Z`` (the first pixel in C order holding the object's maximum).
  CellProfiler 4 handles 2-D images as one-plane volumes and writes the ``_Z`` columns for 2-D
  images too (always 0), so they are written here as well.

Columns are ``<Comp>_Intensity_<Feature>_<channel>`` and ``<Comp>_Location_<Feature>_<channel>``,
ordered compartment, channel, then CellProfiler's feature order (:data:`INTENSITY_FEATURES`,
:data:`LOCATION_FEATURES`). An object without pixels gets NaN everywhere; an object whose
integrated intensity is 0 gets NaN centres of mass and mass displacement (0/0, as in
CellProfiler).

Implementation
--------------
The pixels of each compartment are grouped by object once (a counting sort of the label image,
C order kept within an object) and the edge flags are computed once; one compiled kernel then
walks each object's pixels for all channels: sums, extremes and the arg-max in one pass, the
squared deviations in a second, and the order statistics by in-place selection (quickselect for
the median, then for the lower and upper quartiles within the two halves it leaves; the value
just above a selected rank is the minimum of the block above it). Selection gives exactly the
order statistics of a sort at linear cost, so the results equal CellProfiler's (sums differ by
floating-point summation order only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from hcsflow.features._objects import COMPARTMENTS, Features, check_compartments, group_pixels

#: MeasureObjectIntensity's intensity features, in CellProfiler's order.
INTENSITY_FEATURES: tuple[str, ...] = (
    "IntegratedIntensity",
    "MeanIntensity",
    "StdIntensity",
    "MinIntensity",
    "MaxIntensity",
    "IntegratedIntensityEdge",
    "MeanIntensityEdge",
    "StdIntensityEdge",
    "MinIntensityEdge",
    "MaxIntensityEdge",
    "MassDisplacement",
    "LowerQuartileIntensity",
    "MedianIntensity",
    "MADIntensity",
    "UpperQuartileIntensity",
)

#: MeasureObjectIntensity's location features, in CellProfiler's order.
LOCATION_FEATURES: tuple[str, ...] = (
    "CenterMassIntensity_X",
    "CenterMassIntensity_Y",
    "CenterMassIntensity_Z",
    "MaxIntensity_X",
    "MaxIntensity_Y",
    "MaxIntensity_Z",
)

_N_FEATURES = len(INTENSITY_FEATURES) + len(LOCATION_FEATURES)


@numba.njit(cache=True, nogil=True)
def inner_boundary(labels: np.ndarray) -> np.ndarray:
    """``find_boundaries(labels, mode="inner")``: object pixels with a differing 4-neighbour.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Returns
    -------
    ndarray of bool, shape (H, W)
        True for a labelled pixel that has a 4-neighbour inside the image with another label
        (the image border is not a boundary, as with scikit-image's reflecting morphology).
    """
    h, w = labels.shape
    out = np.zeros((h, w), dtype=np.bool_)
    for i in range(h):
        for j in range(w):
            v = labels[i, j]
            if v == 0:
                continue
            if (
                (i > 0 and labels[i - 1, j] != v)
                or (i < h - 1 and labels[i + 1, j] != v)
                or (j > 0 and labels[i, j - 1] != v)
                or (j < w - 1 and labels[i, j + 1] != v)
            ):
                out[i, j] = True
    return out


@numba.njit(cache=True, nogil=True)
def _select(a: np.ndarray, lo: int, hi: int, k: int) -> float:
    """Rearrange ``a[lo:hi]`` so ``a[k]`` holds its rank-``k`` value (Hoare quickselect).

    Afterwards ``a[lo:k] <= a[k] <= a[k + 1:hi]``. ``lo <= k < hi``.
    """
    left = lo
    right = hi - 1
    while right > left:
        mid = (left + right) >> 1
        if a[mid] < a[left]:
            a[mid], a[left] = a[left], a[mid]
        if a[right] < a[left]:
            a[right], a[left] = a[left], a[right]
        if a[right] < a[mid]:
            a[right], a[mid] = a[mid], a[right]
        pivot = a[mid]
        i = left
        j = right
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            right = j
        elif k >= i:
            left = i
        else:
            break
    return a[k]


@numba.njit(cache=True, nogil=True)
def _block_min(a: np.ndarray, lo: int, hi: int) -> float:
    m = a[lo]
    for t in range(lo + 1, hi):
        if a[t] < m:
            m = a[t]
    return m


@numba.njit(cache=True, nogil=True)
def _cp_interp(lo_val: float, hi_val: float, k: int, f: float, cnt: int) -> float:
    """CellProfiler's quantile interpolation between ranks ``k`` and ``k + 1``."""
    if k < cnt - 1:
        return lo_val * (1.0 - f) + hi_val * f
    return lo_val


@numba.njit(cache=True, nogil=True)
def _quartiles(a: np.ndarray, cnt: int) -> tuple[float, float, float]:
    """CellProfiler's lower quartile, median and upper quartile of ``a[:cnt]`` (reordered)."""
    p50 = cnt * 0.5
    k50 = int(p50)
    m_lo = _select(a, 0, cnt, k50)
    m_hi = _block_min(a, k50 + 1, cnt) if k50 + 1 < cnt else m_lo
    median = _cp_interp(m_lo, m_hi, k50, p50 - k50, cnt)
    p25 = cnt * 0.25
    k25 = int(p25)
    if k25 < k50:
        q_lo = _select(a, 0, k50, k25)
        q_hi = _block_min(a, k25 + 1, k50) if k25 + 1 < k50 else m_lo
    else:
        q_lo, q_hi = m_lo, m_hi
    lower = _cp_interp(q_lo, q_hi, k25, p25 - k25, cnt)
    p75 = cnt * 0.75
    k75 = int(p75)
    if k75 > k50:
        q_lo = _select(a, k50 + 1, cnt, k75)
        q_hi = _block_min(a, k75 + 1, cnt) if k75 + 1 < cnt else q_lo
    else:
        q_lo, q_hi = m_lo, m_hi
    upper = _cp_interp(q_lo, q_hi, k75, p75 - k75, cnt)
    return lower, median, upper


@numba.njit(cache=True, nogil=True)
def _channel_features(v_c, xs, ys, is_edge, cnt, cm_x, cm_y, buf, o, k):  # pragma: no cover
    """The features of one channel of one object, written into column ``k`` of ``o``.

    v_c, xs, ys, is_edge : the object's values, columns, rows and edge flags (first ``cnt``
    entries); cm_x, cm_y : its centroid; buf : scratch of length >= ``cnt``;
    o : (_N_FEATURES, n) float64.
    """
    total = 0.0
    sx = 0.0
    sy = 0.0
    vmin = np.inf
    vmax = -np.inf
    tmax = -1
    ecnt = 0
    etotal = 0.0
    emin = np.inf
    emax = -np.inf
    for t in range(cnt):
        v = v_c[t]
        total += v
        sx += xs[t] * v
        sy += ys[t] * v
        if v < vmin:
            vmin = v
        if v > vmax:
            vmax = v
            tmax = t
        if is_edge[t]:
            ecnt += 1
            etotal += v
            if v < emin:
                emin = v
            if v > emax:
                emax = v
    mean = total / cnt
    emean = etotal / ecnt if ecnt > 0 else 0.0
    ss = 0.0
    ess = 0.0
    for t in range(cnt):
        v = v_c[t]
        buf[t] = v
        d = v - mean
        ss += d * d
        if is_edge[t]:
            d = v - emean
            ess += d * d
    lower, median, upper = _quartiles(buf, cnt)
    for t in range(cnt):
        buf[t] = abs(v_c[t] - median)
    p50 = cnt * 0.5
    k50 = int(p50)
    d_lo = _select(buf, 0, cnt, k50)
    d_hi = _block_min(buf, k50 + 1, cnt) if k50 + 1 < cnt else d_lo
    mad = _cp_interp(d_lo, d_hi, k50, p50 - k50, cnt)
    o[0, k] = total
    o[1, k] = mean
    o[2, k] = np.sqrt(ss / cnt)
    o[3, k] = vmin
    o[4, k] = vmax
    if ecnt > 0:
        o[5, k] = etotal
        o[6, k] = emean
        o[7, k] = np.sqrt(ess / ecnt)
        o[8, k] = emin
        o[9, k] = emax
    else:  # no edge pixel (an object filling the image): CellProfiler's zeros
        for f in range(5, 10):
            o[f, k] = 0.0
    o[11, k] = lower
    o[12, k] = median
    o[13, k] = mad
    o[14, k] = upper
    if total != 0.0:
        cmi_x = sx / total
        cmi_y = sy / total
        o[15, k] = cmi_x
        o[16, k] = cmi_y
        o[17, k] = 0.0
        o[10, k] = np.sqrt((cm_x - cmi_x) ** 2 + (cm_y - cmi_y) ** 2)
    o[18, k] = xs[tmax]
    o[19, k] = ys[tmax]
    o[20, k] = 0.0


@numba.njit(cache=True, nogil=True)
def _intensity_kernel(
    pixels: np.ndarray, order: np.ndarray, offsets: np.ndarray, edge: np.ndarray, width: int
) -> np.ndarray:
    """All features of all objects and channels.

    ``pixels`` is the image as (H * W, C) (pixel-major, so one object pixel's channels share a
    cache line); returns (C, _N_FEATURES, n) float64.
    """
    nch = pixels.shape[1]
    n = offsets.size - 1
    out = np.full((nch, _N_FEATURES, n), np.nan)
    maxcnt = 0
    for k in range(n):
        maxcnt = max(maxcnt, offsets[k + 1] - offsets[k])
    vals = np.empty((nch, maxcnt))
    buf = np.empty(maxcnt)
    xs = np.empty(maxcnt)
    ys = np.empty(maxcnt)
    is_edge = np.empty(maxcnt, dtype=np.bool_)
    for k in range(n):
        s = offsets[k]
        cnt = offsets[k + 1] - s
        if cnt == 0:
            continue
        cm_x = 0.0
        cm_y = 0.0
        for t in range(cnt):
            p = order[s + t]
            y = p // width
            x = p - y * width
            xs[t] = x
            ys[t] = y
            cm_x += x
            cm_y += y
            is_edge[t] = edge[p]
            for c in range(nch):
                vals[c, t] = pixels[p, c]
        cm_x /= cnt
        cm_y /= cnt
        for c in range(nch):
            _channel_features(vals[c], xs, ys, is_edge, cnt, cm_x, cm_y, buf, out[c], k)
    return out


def measure_intensity(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
) -> Features:
    """CellProfiler's MeasureObjectIntensity for every compartment and channel.

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

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_Intensity_<Feature>_<ch>`` for :data:`INTENSITY_FEATURES` and
        ``<Comp>_Location_<Feature>_<ch>`` for :data:`LOCATION_FEATURES`, ordered by
        compartment, channel, feature. NaN for objects absent from a compartment.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(channel_names):
        raise ValueError(
            f"image must be (C, H, W) with C = {len(channel_names)} channels, got {image.shape}"
        )
    check_compartments(compartments, n)
    names = [c for c in COMPARTMENTS if c in compartments] + [
        c for c in compartments if c not in COMPARTMENTS
    ]
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    pixels = np.ascontiguousarray(image.reshape(image.shape[0], -1).T, dtype=dtype)
    out: Features = {}
    for comp in names:
        labels = np.asarray(compartments[comp])
        if labels.shape != image.shape[1:]:
            raise ValueError(f"{comp} labels {labels.shape} do not match the image {image.shape}")
        order, offsets = group_pixels(labels, n)
        edge = inner_boundary(labels).ravel()
        values = _intensity_kernel(pixels, order, offsets, edge, labels.shape[1])
        for c, ch in enumerate(channel_names):
            for f, feat in enumerate(INTENSITY_FEATURES):
                out[f"{comp}_Intensity_{feat}_{ch}"] = values[c, f].copy()
            for f, feat in enumerate(LOCATION_FEATURES):
                out[f"{comp}_Location_{feat}_{ch}"] = values[c, len(INTENSITY_FEATURES) + f].copy()
    return out
