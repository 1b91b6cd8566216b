"""Haralick texture features per object (CellProfiler 4 MeasureTexture).

Method
------
For every compartment, channel, scale ``s`` and direction ``d`` (the four 2-D offsets
``(0, s)``, ``(s, s)``, ``(s, 0)``, ``(s, -s)`` in (y, x), CellProfiler's ``_00`` .. ``_03``),
the symmetric gray-level co-occurrence matrix of each object is accumulated and the thirteen
Haralick features are computed from it, exactly as CellProfiler does through
``mahotas.features.haralick(..., ignore_zeros=True)``:

* **Quantisation.** The whole image is converted once with scikit-image's ``img_as_ubyte``
  rule (``rint(float32(x) * 255)`` in float32, clipped to 0..255), and for
  ``gray_levels != 256`` mapped through ``rescale_intensity(in_range=(0, 255),
  out_range=(0, gray_levels - 1))`` truncated to integers. Neither the image nor the object
  is stretched to its own range (CellProfiler >= 4.2, cp_measure).
* **Pairs.** A pixel pair ``(p, p + offset)`` counts when both pixels belong to the same
  object and both quantised values are non-zero (``ignore_zeros``: zero is background, and
  foreground pixels that quantise to 0 drop out too). Every pair is counted as ``(a, b)`` and
  ``(b, a)`` (symmetric matrix) and the matrix is normalised to probabilities.
* **Features** (mahotas' definitions, ``p`` the normalised matrix, ``px`` its marginal,
  ``p_{x+y}`` / ``p_{x-y}`` the distributions of ``i + j`` and ``|i - j|``): AngularSecondMoment
  ``sum p^2``; Contrast ``sum k^2 p_{x-y}(k)``; Correlation ``(sum ij p - ux uy) / (sx sy)``
  (1 when ``sx`` or ``sy`` is 0); Variance ``var(px)``; InverseDifferenceMoment
  ``sum p / (1 + (i - j)^2)``; SumAverage / SumVariance / SumEntropy of ``p_{x+y}``; Entropy;
  DifferenceVariance (the variance of the *vector* ``p_{x-y}`` over its ``max + 1`` entries,
  where ``max`` is the object's largest quantised value, mahotas' default); DifferenceEntropy;
  InfoMeas1 ``(H - HXY1) / max(HX, HY)``; InfoMeas2 ``sqrt(1 - exp(-2 (HXY2 - H)))``. Entropies
  are in bits. Because the matrix is symmetric, ``HX = HY`` and ``HXY1 = HXY2 = HX + HY``,
  which is how they are computed here.
* **Missing values.** An object with no pixels, or without a single valid pair in *any* of the
  four directions of a scale, gets NaN for every feature of that scale (mahotas raises and
  CellProfiler stores NaN for the object).

Implementation
--------------
The pixels of each compartment are grouped by object once (a counting sort of the label
image, shared by all channels and scales). A compiled kernel then lists, per object and
direction, the pixel pairs inside the object once, and for every channel accumulates over that
list the upper triangle of the co-occurrence counts in a dense scratch matrix of the object's
gray-level range (resetting only the touched cells), the marginal, sum and difference
histograms and ``sum ij``; the thirteen features follow from these integer counts (entropies
via a table of ``log2 c``). Work is linear in the number of object pixels; no per-object
Python loop. The results equal mahotas' to rounding (~1e-12 relative).

Deliberate differences
----------------------
Values outside ``[0, 1]`` are clipped by the quantisation (``img_as_ubyte`` raises for floats
above 1 or below -1; negatives in ``[-1, 0)`` become 0 in both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np
import skimage.exposure

from hcsflow.features._objects import Features, check_compartments, group_pixels

#: The thirteen Haralick features, in CellProfiler's (and mahotas') order.
HARALICK_FEATURES: tuple[str, ...] = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)

#: The four 2-D co-occurrence directions (dy, dx) at unit distance, CellProfiler's _00.._03.
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 0), (1, -1))


@numba.njit(cache=True, nogil=True)
def _entropy(hist, length, total, log_total, lg):  # pragma: no cover - compiled
    """Entropy in bits of the counts ``hist[:length]`` summing to ``total`` (``lg[c] = log2 c``).

    Summed as ``sum (c / T) (log2 T - log2 c)``: non-negative terms, exactly 0 for one bin.
    """
    acc = 0.0
    for i in range(length):
        cnt = hist[i]
        if cnt:
            acc += cnt / total * (log_total - lg[cnt])
    return acc


@numba.njit(cache=True, nogil=True)
def _haralick_features(  # pragma: no cover - compiled
    joint, touched, n_touched, marg, diff, sumh, sab, n_pairs, maxv, lg, row
):
    """The 13 features of one symmetric co-occurrence matrix, written into ``row`` (13,).

    joint : flat (maxv, maxv) upper triangle ``i <= j`` of the pair counts (each unordered
    pair once), nonzero only at ``touched[:n_touched]`` (reset to 0 here); marg, diff, sumh :
    histograms of the levels, of ``|i - j|`` and of ``i + j`` (counts of the symmetric
    matrix, which sums to ``T = 2 * n_pairs``); sab : ``sum i * j`` over it; maxv : the
    object's largest level + 1; lg : ``log2 c`` for every possible count ``c <= T``.
    """
    total = 2.0 * n_pairs
    log_total = lg[2 * n_pairs]
    sq = 0
    ent = 0.0
    for t in range(n_touched):
        cell = touched[t]
        cnt = np.int64(joint[cell])
        joint[cell] = 0
        if cell // maxv == cell % maxv:  # diagonal (a, a): counted twice
            sq += 4 * cnt * cnt
            ent += 2 * cnt / total * (log_total - lg[2 * cnt])
        else:  # (a, b) and (b, a)
            sq += 2 * cnt * cnt
            ent += 2 * (cnt / total * (log_total - lg[cnt]))
    asm = sq / (total * total)
    hx = _entropy(marg, maxv, total, log_total, lg)
    dent = _entropy(diff, maxv, total, log_total, lg)
    sent = _entropy(sumh, 2 * maxv - 1, total, log_total, lg)
    ux = 0.0
    ex2 = 0.0
    for i in range(maxv):
        pv = marg[i] / total
        ux += pv * i
        ex2 += pv * i * i
    vx = ex2 - ux * ux
    contrast = 0.0
    idm = 0.0
    dmean = 0.0
    for i in range(maxv):
        pv = diff[i] / total
        dmean += pv
        contrast += i * i * pv
        idm += pv / (1.0 + i * i)
    dmean /= maxv
    dvar = 0.0
    for i in range(maxv):
        dev = diff[i] / total - dmean
        dvar += dev * dev
    dvar /= maxv
    savg = 0.0
    ssq = 0.0
    for i in range(2 * maxv - 1):
        pv = sumh[i] / total
        savg += i * pv
        ssq += i * i * pv
    sx = np.sqrt(vx)
    if sx == 0.0:
        corr = 1.0
    else:
        corr = (1.0 / sx / sx) * (sab / total - ux * ux)
    # Symmetric matrix: HX == HY and HXY1 == HXY2 == HX + HY.
    hxy = 2.0 * hx
    if hx == 0.0:
        info1 = ent - hxy
    else:
        info1 = (ent - hxy) / hx
    row[0] = asm
    row[1] = contrast
    row[2] = corr
    row[3] = vx
    row[4] = idm
    row[5] = savg
    row[6] = ssq - savg * savg
    row[7] = sent
    row[8] = ent
    row[9] = dvar
    row[10] = dent
    row[11] = info1
    row[12] = np.sqrt(max(0.0, 1.0 - np.exp(-2.0 * (hxy - ent))))


@numba.njit(cache=True, nogil=True)
def _object_pairs(labels, width, pixels, lab, dy, dx, first, second):  # pragma: no cover
    """The pixel pairs ``(p, p + (dy, dx))`` with both pixels in object ``lab``.

    labels : (H * W,) int; width : W; pixels : flat indices of the object's pixels in their
    grouped order. Writes the pairs into ``first`` and ``second`` in that order and returns
    their number.
    """
    n_px = labels.size
    step = dy * width + dx
    m = 0
    for p in pixels:
        x2 = p % width + dx
        p2 = p + step
        if x2 < 0 or x2 >= width or p2 >= n_px or labels[p2] != lab:
            continue
        first[m] = p
        second[m] = p2
        m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _haralick_kernel(q, labels, width, order, starts, deltas, out):  # pragma: no cover
    """Haralick features of every object for every channel and direction.

    q : (C, H * W) uint8 quantised image; labels : (H * W,) int; width : W; order, starts :
    grouping of the object pixels (see group_pixels); deltas : (D, 2) int64 offsets (dy, dx),
    dy >= 0; out : (C, D, 13, n) float64, pre-filled with NaN, written in place.

    Per object and direction, the same-object pixel pairs are listed once; every channel then
    accumulates its co-occurrence counts over that list.
    """
    n_ch = q.shape[0]
    n_dir = deltas.shape[0]
    n = starts.size - 1
    largest = 0
    for k in range(n):
        largest = max(largest, starts[k + 1] - starts[k])
    first = np.empty(largest, np.int64)
    second = np.empty(largest, np.int64)
    lg = np.zeros(2 * largest + 1)
    for c in range(1, 2 * largest + 1):
        lg[c] = np.log2(np.float64(c))
    joint = np.zeros(256 * 256, np.int32)
    touched = np.empty(256 * 256, np.int64)
    marg = np.zeros(256, np.int64)
    diff = np.zeros(256, np.int64)
    sumh = np.zeros(512, np.int64)
    maxv = np.empty(n_ch, np.int64)
    valid = np.empty(n_ch, np.bool_)
    feats = np.empty((n_ch, n_dir, 13))
    for k in range(n):
        s, e = starts[k], starts[k + 1]
        if s == e:
            continue
        lab = k + 1
        for c in range(n_ch):
            top = 0
            for i in range(s, e):
                top = max(top, q[c, order[i]])
            maxv[c] = np.int64(top) + 1
            valid[c] = True
        for d in range(n_dir):
            m = _object_pairs(
                labels, width, order[s:e], lab, deltas[d, 0], deltas[d, 1], first, second
            )
            for c in range(n_ch):
                if not valid[c]:
                    continue
                mv = maxv[c]
                for i in range(mv):  # (loops compile much faster than slice assignments)
                    marg[i] = 0
                    diff[i] = 0
                for i in range(2 * mv):
                    sumh[i] = 0
                n_touched = 0
                n_pairs = 0
                sab = 0
                for i in range(m):
                    a = np.int64(q[c, first[i]])
                    b = np.int64(q[c, second[i]])
                    if a == 0 or b == 0:
                        continue
                    n_pairs += 1
                    cell = a * mv + b if a <= b else b * mv + a
                    if joint[cell] == 0:
                        touched[n_touched] = cell
                        n_touched += 1
                    joint[cell] += 1
                    marg[a] += 1
                    marg[b] += 1
                    sumh[a + b] += 2
                    diff[abs(a - b)] += 2
                    sab += 2 * a * b
                if n_pairs == 0:
                    valid[c] = False
                    continue
                _haralick_features(
                    joint, touched, n_touched, marg, diff, sumh, sab, n_pairs, mv, lg, feats[c, d]
                )
        for c in range(n_ch):
            if valid[c]:
                for d in range(n_dir):
                    for f in range(13):
                        out[c, d, f, k] = feats[c, d, f]


def quantise(image: np.ndarray, gray_levels: int = 256) -> np.ndarray:
    """Quantise intensities to ``gray_levels`` levels the way CellProfiler's MeasureTexture does.

    Parameters
    ----------
    image : ndarray of float, shape (..., H, W)
        Intensities in CellProfiler units (``[0, 1]``); values outside are clipped.
    gray_levels : int
        Number of levels, 2..256.

    Returns
    -------
    ndarray of uint8, same shape as ``image``
        ``rint(float32(x) * 255)`` clipped to 0..255 (scikit-image's ``img_as_ubyte``), then,
        for ``gray_levels != 256``, rescaled from ``[0, 255]`` to ``[0, gray_levels - 1]`` and
        truncated (``skimage.exposure.rescale_intensity(...).astype(uint8)``).
    """
    scaled = np.multiply(image, np.float32(255), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    q = scaled.astype(np.uint8)
    if gray_levels != 256:
        lut = skimage.exposure.rescale_intensity(
            np.arange(256, dtype=np.uint8), in_range=(0, 255), out_range=(0, gray_levels - 1)
        ).astype(np.uint8)
        q = lut[q]
    return q


def measure_texture(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    scales: Sequence[int] = (3,),
    gray_levels: int = 256,
) -> Features:
    """Haralick texture features of every object (CellProfiler 4 MeasureTexture).

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Illumination-corrected intensities in CellProfiler units (mostly within [0, 1]).
    compartments : mapping of str to ndarray of int, shape (H, W)
        Compartment name -> label image (labels ``0..n``, object ``k`` is row ``k - 1``).
    n : int
        Number of rows.
    channel_names : sequence of str, length C
    scales : sequence of int
        Co-occurrence distances in pixels (CellProfiler's "texture scale"), each >= 1.
    gray_levels : int
        Number of gray levels of the quantisation, 2..256.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_Texture_<Feature>_<channel>_<scale>_<dd>_<gray_levels>`` for every compartment,
        feature, channel, scale and direction ``dd`` in 00..03 (in that nesting order). NaN for
        objects without pixels or without a valid pixel pair in some direction of a scale.
    """
    image = np.asarray(image)
    check_compartments(compartments, n, image, channel_names)
    scales = tuple(int(s) for s in scales)
    if not scales or min(scales) < 1:
        raise ValueError(f"scales must be positive integers, got {scales}")
    if not 2 <= int(gray_levels) <= 256:
        raise ValueError(f"gray_levels must be within 2..256, got {gray_levels}")
    gray_levels = int(gray_levels)

    height, width = image.shape[1:]
    q = quantise(image, gray_levels).reshape(len(channel_names), height * width)
    n_ch = len(channel_names)
    n_dir = len(DIRECTIONS)
    unit = np.asarray(DIRECTIONS, dtype=np.int64)
    features: Features = {}
    for comp, labels in compartments.items():
        flat = np.ascontiguousarray(labels, dtype=np.int32).ravel()
        order, starts = group_pixels(flat, n)
        values = np.full((len(scales), n_ch, n_dir, len(HARALICK_FEATURES), n), np.nan)
        for si, scale in enumerate(scales):
            _haralick_kernel(q, flat, width, order, starts, unit * scale, values[si])
        for fi, feat in enumerate(HARALICK_FEATURES):
            for ci, ch in enumerate(channel_names):
                for si, scale in enumerate(scales):
                    for d in range(n_dir):
                        name = f"{comp}_Texture_{feat}_{ch}_{scale}_{d:02d}_{gray_levels}"
                        features[name] = values[si, ci, d, fi].copy()
    return features
