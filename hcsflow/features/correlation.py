"""Colocalisation of channel pairs per object (CellProfiler 4 MeasureColocalization).

Method
------
For every compartment and every pair of channels ``A, B`` (``A`` before ``B`` in channel
order), over the pixels ``a, b`` of each object:

* ``Correlation_A_B``: Pearson's r, ``sum xy / sqrt(sum x^2 sum y^2)`` with ``x = a - mean(a)``,
  ``y = b - mean(b)`` (NaN when a channel is constant in the object).
* ``Slope_A_B``: least-squares slope of ``b`` on ``a``, ``sum xy / sum x^2``. CellProfiler writes
  the slope for whole images only; cp_measure (and hcsflow) also give it per object.
* The thresholded measures use the pixels at or above ``manders_threshold`` percent of the
  object's maximum in each channel, ``ta = t * max(a)``, ``tb = t * max(b)`` (computed in
  float32 like CellProfiler), and the "colocalised" pixels ``a >= ta and b >= tb``:
  ``Overlap_A_B = sum ab / sqrt(sum a^2 sum b^2)``, ``K_A_B = sum ab / sum a^2``,
  ``K_B_A = sum ab / sum b^2`` (sums over the colocalised pixels),
  ``Manders_A_B = sum a (colocalised) / sum a (a >= ta)`` and ``Manders_B_A`` likewise, and
  the rank-weighted colocalisation ``RWC_A_B = sum a w (colocalised) / sum a (a >= ta)`` with
  ``w = (R - |rank(a) - rank(b)|) / R``, ranks being dense ranks (0 for the lowest value, ties
  share a rank) and ``R`` one more than the largest rank of either channel. All of them are 0
  for an object without colocalised pixels (CellProfiler's convention).
* ``Costes_A_B``, ``Costes_B_A`` (``costes=True`` only): Manders' coefficients above Costes'
  automatic thresholds, found per object by cp_measure's "faster" search: orthogonal
  regression ``b = s a + i`` on the pixels where either channel is non-zero, then a
  bisection (steps of 1/6 of the window) on the grid ``1 / costes_scale`` for the lowest
  threshold ``ta`` (``tb = s ta + i``) at which the pixels below either threshold still have a
  non-negative correlation; ``Costes_A_B = sum a (a > ta and b > tb) / sum a (a >= ta)``.
  Undefined cases (fewer than 3 pixels, a constant channel, no usable threshold) are NaN.
  Intensities are clipped to [0, 1] for this search (cp_measure refuses values outside;
  slightly negative values come from dark-field subtraction).

Objects without pixels are NaN everywhere.

Ranks: CellProfiler 4's module ranks the pixels of *all* objects of the image together
(``rwc_ranks="image"``: one dense ranking per channel over the compartment's pixels, ``R``
over all of them), so that a cell's RWC depends on the other cells of the field
(CellProfiler issue #4967). cp_measure and the CellProfiler plugin MeasureRWCperObject rank
within each object (``rwc_ranks="object"``, the default here). Likewise CellProfiler 4
computes Costes' thresholds once on the whole image and applies them to every object, while
cp_measure (and hcsflow) search them per object.

Implementation
--------------
The pixels of each compartment are grouped by object once (a counting sort) and gathered
per channel; dense ranks come from a radix sort of each object's values per channel. A compiled
kernel then makes, per object, one pass per channel (mean, maximum, threshold sums) and one
pass per channel pair accumulating all the sums above, in float64. No per-object Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from hcsflow.features._objects import Features, check_compartments, group_pixels

#: Features per channel pair, in output order; those ending in "2" are written as ``B_A``.
_FEATURES: tuple[str, ...] = (
    "Correlation",
    "Slope",
    "Overlap",
    "K",
    "K2",
    "Manders",
    "Manders2",
    "RWC",
    "RWC2",
)
_COSTES: tuple[str, ...] = ("Costes", "Costes2")


@numba.njit(cache=True, nogil=True)
def _segment_ranks(values, starts, ranks):  # pragma: no cover - compiled
    """Dense ranks of ``values`` (C, P) float32 within each segment, into ``ranks`` (C, P).

    ``values`` must hold no -0.0 (equal to 0.0 but with other bits).
    Segment ``k`` is ``starts[k]:starts[k + 1]``. Ranks start at 0 for the lowest value and
    equal values share a rank. Each segment is sorted by an LSD radix sort of the float's
    bits mapped to an order-preserving unsigned integer (4 passes of 8 bits, a pass skipped
    when all keys share that byte).
    """
    n = starts.size - 1
    largest = 0
    for k in range(n):
        largest = max(largest, starts[k + 1] - starts[k])
    key_a = np.empty(largest, np.uint32)
    key_b = np.empty(largest, np.uint32)
    idx_a = np.empty(largest, np.int64)
    idx_b = np.empty(largest, np.int64)
    hist = np.empty(256, np.int64)
    for c in range(values.shape[0]):
        bits = values[c].view(np.uint32)
        for k in range(n):
            s, e = starts[k], starts[k + 1]
            m = e - s
            if m == 0:
                continue
            for i in range(m):
                b = bits[s + i]
                key_a[i] = b ^ (np.uint32(0xFFFFFFFF) if b >> 31 else np.uint32(0x80000000))
                idx_a[i] = i
            src_k, src_i, dst_k, dst_i = key_a, idx_a, key_b, idx_b
            for shift in range(0, 32, 8):
                hist[:] = 0
                for i in range(m):
                    hist[(src_k[i] >> shift) & 255] += 1
                if hist[(src_k[0] >> shift) & 255] == m:
                    continue
                total = 0
                for h in range(256):
                    cnt = hist[h]
                    hist[h] = total
                    total += cnt
                for i in range(m):
                    d = (src_k[i] >> shift) & 255
                    pos = hist[d]
                    hist[d] = pos + 1
                    dst_k[pos] = src_k[i]
                    dst_i[pos] = src_i[i]
                src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
            rank = 0
            for t in range(m):
                if t and src_k[t] != src_k[t - 1]:
                    rank += 1
                ranks[c, s + src_i[t]] = rank
    return ranks


@numba.njit(cache=True, nogil=True)
def _gather(image, order):  # pragma: no cover - compiled
    """``image[:, order]`` for ``image`` (C, H * W) float32 and ``order`` (P,): (C, P)."""
    out = np.empty((image.shape[0], order.size), np.float32)
    for c in range(image.shape[0]):
        for i in range(order.size):
            out[c, i] = image[c, order[i]]
    return out


def _ranks(values: np.ndarray, starts: np.ndarray, per_object: bool) -> np.ndarray:
    """Dense ranks of each channel's values (C, P), within objects or over all of them.

    Parameters
    ----------
    values : ndarray of float32, shape (C, P)
        Pixel values grouped by object (object ``k`` at ``starts[k]:starts[k + 1]``).
    starts : ndarray of int64, shape (n + 1,)
    per_object : bool

    Returns
    -------
    ndarray of int32, shape (C, P)
    """
    if not per_object:
        starts = np.array([0, values.shape[1]], dtype=np.int64)
    canonical = np.ascontiguousarray(values + np.float32(0.0))  # -0.0 + 0.0 is +0.0
    return _segment_ranks(canonical, starts, np.empty(values.shape, dtype=np.int32))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _channel_moments(v, r, s, e, frac):  # pragma: no cover - compiled
    """Statistics of one channel over the pixels ``s:e`` of one object.

    v : (P,) float32 values; r : (P,) int ranks; frac : float32 threshold fraction of the
    maximum. Returns the mean, the threshold (float32), the sum of the values at or above it,
    the sum of squared deviations from the mean and the largest rank.
    """
    size = e - s
    acc = 0.0
    vmax = v[s]
    rmax = 0
    for i in range(s, e):
        x = v[i]
        acc += x
        vmax = max(vmax, x)
        rmax = max(rmax, r[i])
    m = acc / size
    t = np.float32(frac * vmax)
    above = 0.0
    ss = 0.0
    for i in range(s, e):
        x = v[i]
        ss += (x - m) * (x - m)
        if x >= t:
            above += x
    return m, t, above, ss, rmax


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_features(
    values, ranks, s, e, ca, cb, mean, thr, tot, sxx, top_rank, out
):  # pragma: no cover - compiled
    """The 9 features of channels ``ca``, ``cb`` over the pixels ``s:e`` of one object.

    mean, thr, tot, sxx, top_rank : (C,) per-channel results of :func:`_channel_moments`
    (``top_rank`` is the rank range of the RWC weights); out : (9,) float64, written.
    """
    ma, mb = mean[ca], mean[cb]
    ta, tb = thr[ca], thr[cb]
    r = np.float64(max(top_rank[ca], top_rank[cb]) + 1)
    sxy = 0.0
    n_col = 0
    sa = 0.0
    sb = 0.0
    saa = 0.0
    sbb = 0.0
    sab = 0.0
    swa = 0.0
    swb = 0.0
    for i in range(s, e):
        va = values[ca, i]
        vb = values[cb, i]
        sxy += (va - ma) * (vb - mb)
        if va >= ta and vb >= tb:
            a = np.float64(va)
            b = np.float64(vb)
            n_col += 1
            sa += a
            sb += b
            saa += a * a
            sbb += b * b
            sab += a * b
            w = (r - abs(ranks[ca, i] - ranks[cb, i])) / r
            swa += a * w
            swb += b * w
    if sxx[ca] == 0.0 or sxx[cb] == 0.0:
        out[0] = np.nan
    else:
        out[0] = min(1.0, max(-1.0, sxy / np.sqrt(sxx[ca] * sxx[cb])))
    out[1] = sxy / sxx[ca] if sxx[ca] != 0.0 else np.nan
    if n_col == 0:
        for f in range(2, 9):
            out[f] = 0.0
    else:
        out[2] = sab / np.sqrt(saa * sbb)
        out[3] = sab / saa
        out[4] = sab / sbb
        out[5] = sa / tot[ca]
        out[6] = sb / tot[cb]
        out[7] = swa / tot[ca]
        out[8] = swb / tot[cb]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _coloc_kernel(values, ranks, starts, pairs, frac, object_ranks, out):  # pragma: no cover
    """Correlation, slope, overlap, K, Manders and RWC of every object and channel pair.

    values : (C, P) float32 pixel values grouped by object; ranks : (C, P) int dense ranks
    (within objects if ``object_ranks``, else over all pixels); starts : (n + 1,) segment
    bounds; pairs : (Q, 2) channel indices; frac : float32 threshold fraction of the object
    maximum; out : (Q, 9, n) float64, pre-filled with NaN, written in place.
    """
    n_ch = values.shape[0]
    n = starts.size - 1
    mean = np.empty(n_ch)
    thr = np.empty(n_ch, np.float32)
    tot = np.empty(n_ch)
    sxx = np.empty(n_ch)
    top_rank = np.empty(n_ch, np.int64)
    global_rank = np.zeros(n_ch, np.int64)
    if not object_ranks:
        for c in range(n_ch):
            if ranks.shape[1]:
                global_rank[c] = ranks[c].max()
    for k in range(n):
        s, e = starts[k], starts[k + 1]
        if s == e:
            continue
        for c in range(n_ch):
            m, t, above, ss, rmax = _channel_moments(values[c], ranks[c], s, e, frac)
            mean[c] = m
            thr[c] = t
            tot[c] = above
            sxx[c] = ss
            top_rank[c] = rmax if object_ranks else global_rank[c]
        for q in range(pairs.shape[0]):
            ca, cb = pairs[q, 0], pairs[q, 1]
            _pair_features(values, ranks, s, e, ca, cb, mean, thr, tot, sxx, top_rank, out[q, :, k])


@numba.njit(cache=True, nogil=True)
def _masked_pearson(a, b, below_a, below_b):  # pragma: no cover - compiled
    """Pearson's r of the pixels with ``a < below_a or b < below_b``; NaN if undefined.

    Undefined: fewer than 3 such pixels or a constant channel among them (cp_measure).
    """
    cnt = 0
    sa = 0.0
    sb = 0.0
    amin = np.inf
    amax = -np.inf
    bmin = np.inf
    bmax = -np.inf
    for i in range(a.size):
        if not (a[i] < below_a or b[i] < below_b):
            continue
        cnt += 1
        sa += a[i]
        sb += b[i]
        amin = min(amin, a[i])
        amax = max(amax, a[i])
        bmin = min(bmin, b[i])
        bmax = max(bmax, b[i])
    if cnt < 3 or amin == amax or bmin == bmax:
        return np.nan
    ma = sa / cnt
    mb = sb / cnt
    sxy = 0.0
    sxx = 0.0
    syy = 0.0
    for i in range(a.size):
        if not (a[i] < below_a or b[i] < below_b):
            continue
        x = a[i] - ma
        y = b[i] - mb
        sxy += x * y
        sxx += x * x
        syy += y * y
    return max(-1.0, min(1.0, sxy / np.sqrt(sxx * syy)))


@numba.njit(cache=True, nogil=True)
def _costes_object(a, b, scale):  # pragma: no cover - compiled
    """Costes' Manders coefficients (C1, C2) of one object; NaN where undefined.

    a, b : float64 pixel values of the object; scale : the intensity grid (e.g. 65535).
    Follows cp_measure's ``bisection_costes`` and ``_costes_pair``.
    """
    nan2 = (np.nan, np.nan)
    if a.size < 3:
        return nan2
    nz = 0
    for i in range(a.size):
        if a[i] > 0 or b[i] > 0:
            nz += 1
    if nz < 3:
        return nan2
    fz = np.empty(nz)
    sz = np.empty(nz)
    j = 0
    for i in range(a.size):
        if a[i] > 0 or b[i] > 0:
            fz[j] = a[i]
            sz[j] = b[i]
            j += 1
    if fz.max() == fz.min() or sz.max() == sz.min():
        return nan2
    xvar = np.var(fz) * nz / (nz - 1)
    yvar = np.var(sz) * nz / (nz - 1)
    zvar = np.var(fz + sz) * nz / (nz - 1)
    xmean = fz.mean()
    ymean = sz.mean()
    covar = 0.5 * (zvar - (xvar + yvar))
    if abs(covar) <= 8 * np.finfo(np.float64).eps * max(xvar, yvar):
        return nan2
    num = (yvar - xvar) + np.sqrt((yvar - xvar) * (yvar - xvar) + 4 * (covar * covar))
    slope = num / (2 * covar)
    icpt = ymean - slope * xmean
    if not (np.isfinite(slope) and np.isfinite(icpt)):
        return nan2
    left = 1.0
    right = float(scale)
    mid = ((right - left) // (6 / 5)) + left
    lastmid = 0.0
    valid = -1.0
    iterations = 0
    while lastmid != mid:
        iterations += 1
        if iterations > 256:
            return nan2
        thr_a = mid / scale
        thr_b = slope * thr_a + icpt
        reg = _masked_pearson(a, b, thr_a, thr_b)
        if not np.isfinite(reg) or reg < 0:
            left = mid - 1
        else:
            right = mid + 1
            valid = mid
        lastmid = mid
        divisor = 6 / 5 if right - left > 6 else 2.0
        mid = ((right - left) // divisor) + left
    if valid < 0:
        return nan2
    thr_a = (valid - 1) / scale
    thr_b = slope * thr_a + icpt
    if not np.isfinite(_masked_pearson(a, b, thr_a, thr_b)):
        return nan2
    col_a = 0.0
    col_b = 0.0
    tot_a = 0.0
    tot_b = 0.0
    for i in range(a.size):
        if a[i] > thr_a and b[i] > thr_b:
            col_a += a[i]
            col_b += b[i]
        if a[i] >= thr_a:
            tot_a += a[i]
        if b[i] >= thr_b:
            tot_b += b[i]
    if tot_a <= 0 or tot_b <= 0:
        return nan2
    return col_a / tot_a, col_b / tot_b


@numba.njit(cache=True, nogil=True)
def _costes_kernel(values, starts, pairs, scale, out):  # pragma: no cover - compiled
    """Costes' coefficients of every object and pair into ``out`` (Q, 2, n), NaN-filled."""
    n = starts.size - 1
    for k in range(n):
        s, e = starts[k], starts[k + 1]
        if s == e:
            continue
        for q in range(pairs.shape[0]):
            a = np.minimum(np.maximum(values[pairs[q, 0], s:e].astype(np.float64), 0.0), 1.0)
            b = np.minimum(np.maximum(values[pairs[q, 1], s:e].astype(np.float64), 0.0), 1.0)
            c1, c2 = _costes_object(a, b, scale)
            out[q, 0, k] = c1
            out[q, 1, k] = c2


def measure_correlation(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    manders_threshold: float = 15.0,
    costes: bool = False,
    rwc_ranks: str = "object",
    costes_scale: int = 65535,
) -> Features:
    """Colocalisation features of every channel pair per object (MeasureColocalization).

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Illumination-corrected intensities in CellProfiler units.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Compartment name -> label image (labels ``0..n``, object ``k`` is row ``k - 1``).
    n : int
        Number of rows.
    channel_names : sequence of str, length C
    manders_threshold : float
        Threshold of the Overlap, K, Manders and RWC measures, in percent of each object's
        maximum intensity per channel (CellProfiler's default 15), 0..100.
    costes : bool
        Also compute ``Costes_A_B`` / ``Costes_B_A`` (slow: an iterative threshold search per
        object and pair).
    rwc_ranks : {"object", "image"}
        Rank the intensities within each object (cp_measure) or over all objects of the
        compartment together (CellProfiler 4's MeasureColocalization module).
    costes_scale : int
        Intensity grid of Costes' threshold search, the maximum of the acquisition's integer
        range (65535 for 16-bit images).

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_Correlation_<Feature>_<A>_<B>`` per compartment and feature (Correlation,
        Slope, Overlap, K, Manders, RWC[, Costes]), pairs in channel order; K, Manders, RWC
        and Costes come as ``_A_B`` then ``_B_A`` for each pair. NaN for absent objects.
    """
    image = np.asarray(image)
    check_compartments(compartments, n, image, channel_names)
    if not 0 <= manders_threshold <= 100:
        raise ValueError(f"manders_threshold must be a percentage, got {manders_threshold}")
    if rwc_ranks not in ("object", "image"):
        raise ValueError(f"rwc_ranks must be 'object' or 'image', got {rwc_ranks!r}")
    if costes and not 2 <= int(costes_scale) <= 2**32 - 1:
        raise ValueError(f"costes_scale must be within 2..2**32-1, got {costes_scale}")

    n_ch = len(channel_names)
    pairs = np.array([(i, j) for i in range(n_ch) for j in range(i + 1, n_ch)], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    flat_image = np.ascontiguousarray(image.reshape(n_ch, -1), dtype=np.float32)
    frac = np.float32(manders_threshold / 100)
    features: Features = {}
    for comp, labels in compartments.items():
        order, starts = group_pixels(np.ascontiguousarray(labels, dtype=np.int32).ravel(), n)
        values = _gather(flat_image, order)
        ranks = _ranks(values, starts, rwc_ranks == "object")
        out = np.full((len(pairs), len(_FEATURES), n), np.nan)
        _coloc_kernel(values, ranks, starts, pairs, frac, rwc_ranks == "object", out)
        names = list(_FEATURES)
        if costes:
            extra = np.full((len(pairs), 2, n), np.nan)
            _costes_kernel(values, starts, pairs, float(costes_scale), extra)
            out = np.concatenate([out, extra], axis=1)
            names += list(_COSTES)
        for f, feat in enumerate(names):
            if feat.endswith("2"):
                continue
            for q, (i, j) in enumerate(pairs):
                a, b = channel_names[i], channel_names[j]
                features[f"{comp}_Correlation_{feat}_{a}_{b}"] = out[q, f].copy()
                if f + 1 < len(names) and names[f + 1] == feat + "2":
                    features[f"{comp}_Correlation_{feat}_{b}_{a}"] = out[q, f + 1].copy()
    return features
