"""Per-pixel passes of the AreaShape features (:mod:`hcsflow.features.shape`).

Numba kernels over a label image with a one-pixel frame of zeros: :func:`_scan` (area, bounding
box, first and second moments, perimeter, Euler number, column distances and each column's top
and bottom pixel), :func:`_row_pass` (distance-transform radii and Zernike monomial sums) and
:func:`_radius_stats` (maximum, mean and median radius from the distance histograms). All
accumulators are indexed by label; object ``k`` is entry ``k``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SQRT2 = math.sqrt(2.0)
# skimage.measure.perimeter: weight of a border pixel by its code
# 1 + 2 * (4-neighbours on the border) + 10 * (diagonal neighbours on the border).
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = _SQRT2
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + _SQRT2) / 2.0


@numba.njit(cache=True, nogil=True)
def _scan(padded, n, weights):  # pragma: no cover - compiled
    """Two sweeps over the pixels: everything that needs only a pixel and its neighbours.

    ``padded`` is the label image with a one-pixel frame of zeros (shape (H+2, W+2)); the
    frame stands for CellProfiler's zero padding and spares the bounds checks. Coordinates in
    the results are those of the unpadded image.

    Returns ``area, rmin, rmax, cmin, cmax`` (int64, shape (n+1,)), ``ref`` (int64, (n+1, 2):
    the first pixel of each object, origin of its sums), ``sums`` (float64, (n+1, 5): sums of
    dr, dc, dr^2, dr dc, dc^2 about ``ref``), ``perimeter`` (float64), ``euler`` (int64),
    ``coldist`` (int32, (H+2, W+2)): for object pixels the distance to the nearest pixel of
    another label in the same column, and ``col_offset, top, bottom``: the topmost and
    bottommost row of object ``k`` in column ``cmin[k] + t`` at ``col_offset[k] + t`` (-1 for
    columns without pixels).
    """
    area, rmin, rmax, cmin, cmax, ref, sums, border, coldist = _sweep_down(padded, n)
    col_offset = np.zeros(n + 2, np.int64)
    for k in range(1, n + 1):
        col_offset[k + 1] = col_offset[k]
        if area[k] > 0:
            col_offset[k + 1] += cmax[k] - cmin[k] + 1
    top = np.full(col_offset[n + 1], -1, np.int64)
    bottom = np.full(col_offset[n + 1], -1, np.int64)
    perimeter, euler = _sweep_up(padded, n, weights, border, coldist, cmin, col_offset, top, bottom)
    for k in range(1, n + 1):
        if area[k] > 0:
            rmin[k] -= 1
            rmax[k] -= 1
            cmin[k] -= 1
            cmax[k] -= 1
            ref[k, 0] -= 1
            ref[k, 1] -= 1
    return (
        area,
        rmin,
        rmax,
        cmin,
        cmax,
        ref,
        sums,
        perimeter,
        euler,
        coldist,
        col_offset,
        top,
        bottom,
    )


@numba.njit(cache=True, nogil=True)
def _sweep_down(padded, n):  # pragma: no cover - compiled
    """First sweep of :func:`_scan`, top-down: area, bounding box, sums, border, upward distances.

    Returns ``area, rmin, rmax, cmin, cmax, ref, sums`` as :func:`_scan` does but in padded
    coordinates, ``border`` (uint8, (H+2, W+2): 1 for object pixels with a 4-neighbour outside
    the object) and ``coldist`` (int32, (H+2, W+2)) holding the distance to the nearest pixel
    of another label above in the same column.
    """
    hp, wp = padded.shape
    area = np.zeros(n + 1, np.int64)
    rmin = np.full(n + 1, hp, np.int64)
    rmax = np.full(n + 1, -1, np.int64)
    cmin = np.full(n + 1, wp, np.int64)
    cmax = np.full(n + 1, -1, np.int64)
    ref = np.zeros((n + 1, 2), np.int64)
    sums = np.zeros((n + 1, 5), np.float64)
    border = np.zeros((hp, wp), np.uint8)
    coldist = np.zeros((hp, wp), np.int32)
    for r in range(1, hp - 1):
        for c in range(1, wp - 1):
            k = padded[r, c]
            if k == 0:
                continue
            if padded[r - 1, c] == k:
                coldist[r, c] = coldist[r - 1, c] + 1
            else:
                coldist[r, c] = 1
            if area[k] == 0:
                ref[k, 0] = r
                ref[k, 1] = c
                rmin[k] = r
            area[k] += 1
            rmax[k] = r
            if c < cmin[k]:
                cmin[k] = c
            if c > cmax[k]:
                cmax[k] = c
            dr = float(r - ref[k, 0])
            dc = float(c - ref[k, 1])
            sums[k, 0] += dr
            sums[k, 1] += dc
            sums[k, 2] += dr * dr
            sums[k, 3] += dr * dc
            sums[k, 4] += dc * dc
            if (
                padded[r - 1, c] != k
                or padded[r + 1, c] != k
                or padded[r, c - 1] != k
                or padded[r, c + 1] != k
            ):
                border[r, c] = 1
    return area, rmin, rmax, cmin, cmax, ref, sums, border, coldist


@numba.njit(cache=True, nogil=True)
def _sweep_up(
    padded, n, weights, border, coldist, cmin, col_offset, top, bottom
):  # pragma: no cover - compiled
    """Second sweep of :func:`_scan`, bottom-up, over the 2 x 2 windows of the padded image.

    Lowers ``coldist`` to the nearest other label below where that is nearer, fills ``top``
    and ``bottom`` (each column's first and last row of every object, unpadded) and returns
    ``perimeter`` (float64, (n+1,)) and ``euler`` (int64, (n+1,)).
    """
    hp, wp = padded.shape
    perimeter = np.zeros(n + 1, np.float64)
    euler = np.zeros(n + 1, np.int64)
    down = np.zeros(wp, np.int32)
    for r in range(hp - 1, 0, -1):  # bottom-up, for the downward column distances
        for c in range(1, wp):
            # 2 x 2 window ending at (r, c): pixel bits 1 = (r, c), 2 = (r-1, c),
            # 4 = (r, c-1), 8 = (r-1, c-1)
            p1 = padded[r, c]
            p2 = padded[r - 1, c]
            p4 = padded[r, c - 1]
            p8 = padded[r - 1, c - 1]
            if p1 == 0:
                down[c] = 0
                if p2 == 0 and p4 == 0 and p8 == 0:
                    continue
            else:
                if padded[r + 1, c] == p1:
                    down[c] += 1
                else:
                    down[c] = 1
                if down[c] < coldist[r, c]:
                    coldist[r, c] = down[c]
                t = col_offset[p1] + c - cmin[p1]
                if bottom[t] < 0:
                    bottom[t] = r - 1
                top[t] = r - 1
            # Euler number (8-connectivity), skimage's bit-quad coefficients: configurations
            # 6 and 14 count -1, 8 counts +1, every other configuration 0
            if p8 != 0:
                if p2 != p8 and p4 != p8 and p1 != p8:  # configuration 8
                    euler[p8] += 1
                elif p2 == p8 and p4 == p8 and p1 != p8:  # configuration 14
                    euler[p8] -= 1
            if p2 != 0 and p2 != p8 and p4 == p2 and p1 != p2:
                euler[p2] -= 1  # configuration 6 of an object without pixel 8
            # perimeter (skimage.measure.perimeter, 4-neighbourhood) of border pixel (r, c)
            if border[r, c] == 0:
                continue
            code = 1
            for dr in range(-1, 2):
                for dc in range(-1, 2):
                    if border[r + dr, c + dc] and padded[r + dr, c + dc] == p1:
                        if dr == 0 or dc == 0:
                            code += 2
                        else:
                            code += 10
            perimeter[p1] += weights[code - 2]  # the centre counted itself as a neighbour
    return perimeter, euler


@numba.njit(cache=True, nogil=True)
def _row_pass(
    padded, n, coldist, hist_offset, circ_i, circ_j, circ_r, degree, mono_index
):  # pragma: no cover - compiled
    """Distance-transform radii and Zernike monomial sums, one sweep over the rows.

    Radii: the nearest pixel outside object ``k`` is 4-adjacent to ``k``, so for a pixel in a
    row run ``[a, b]`` of ``k`` only the columns ``a - 1 .. b + 1`` can hold it (beyond them the
    run's ends, which are outside ``k``, are nearer). The exact squared Euclidean distance is
    the minimum over those columns of the squared column distance plus the squared column
    offset, searched outwards until the offset alone exceeds the best found -- the same integer
    distances as ``scipy.ndimage.distance_transform_edt`` of the object alone. Returns the
    histogram of the squared distances (object ``k`` at ``hist_offset[k]:hist_offset[k + 1]``,
    long enough for any distance inside its bounding box) and, for the Zernike features, with
    ``y = (row - circ_i) / R`` and ``x = (col - circ_j) / R`` (centrosome's divisions, so its
    ``x^2 + y^2 > 1`` test drops the same pixels) the sums ``sum y^a x^b`` at
    ``mono_index[a, b]``. ``padded`` and ``coldist`` carry :func:`_scan`'s one-pixel frame.
    """
    hp, w = padded.shape
    hist = np.zeros(hist_offset[n + 1], np.int64)
    mono = np.zeros((n + 1, mono_index.max() + 1), np.float64)
    f = np.empty(w + 2, np.int64)
    srow = np.empty(degree + 1, np.float64)
    ypow = np.empty(degree + 1, np.float64)
    for r in range(1, hp - 1):
        c = 1
        while c < w - 1:
            k = padded[r, c]
            if k == 0:
                c += 1
                continue
            a = c
            while padded[r, c] == k:  # the zero frame ends every run
                c += 1
            length = c - a  # run [a, c)
            # f[1..length]: squared column distances; f[0] = f[length + 1] = 0 (outside k)
            for t in range(length):
                g = np.int64(coldist[r, a + t])
                f[t + 1] = g * g
            base = hist_offset[k]
            for t in range(1, length + 1):
                # nearest of: own column, either end of the run, other columns of the run
                best = min(f[t], t * t, (length + 1 - t) * (length + 1 - t))
                u = 1
                while u * u < best:
                    uu = u * u
                    if t - u >= 1 and f[t - u] + uu < best:
                        best = f[t - u] + uu
                    if t + u <= length and f[t + u] + uu < best:
                        best = f[t + u] + uu
                    u += 1
                hist[base + best] += 1
            rad = circ_r[k]
            if not rad > 0.0:
                continue
            ym = (r - 1 - circ_i[k]) / rad
            y2 = ym * ym
            srow[:] = 0.0
            hit = False
            for col in range(a, c):
                xm = (col - 1 - circ_j[k]) / rad
                if xm * xm + y2 > 1.0:
                    continue
                hit = True
                p = 1.0
                for b in range(degree + 1):
                    srow[b] += p
                    p *= xm
            if not hit:
                continue
            ypow[0] = 1.0
            for e in range(1, degree + 1):
                ypow[e] = ypow[e - 1] * ym
            for e in range(degree + 1):
                for b in range(degree + 1 - e):
                    mono[k, mono_index[e, b]] += ypow[e] * srow[b]
    return hist, mono


@numba.njit(cache=True, nogil=True)
def _radius_stats(n, area, hist_offset, hist):  # pragma: no cover - compiled
    """Maximum, mean and median of ``sqrt`` of the squared distances counted in ``hist``."""
    max_r = np.zeros(n + 1, np.float64)
    mean = np.zeros(n + 1, np.float64)
    median = np.zeros(n + 1, np.float64)
    for k in range(1, n + 1):
        cnt = area[k]
        if cnt == 0:
            continue
        lo_rank = (cnt - 1) // 2  # 0-based ranks of the middle element(s)
        hi_rank = cnt // 2
        seen = 0
        lo_val = -1
        for t in range(hist_offset[k + 1] - hist_offset[k]):
            c = hist[hist_offset[k] + t]
            if c == 0:
                continue
            root = math.sqrt(t)
            max_r[k] = root
            mean[k] += c * root
            seen += c
            if lo_val < 0 and seen > lo_rank:
                lo_val = t
            if seen > hi_rank and median[k] == 0.0:
                median[k] = (math.sqrt(lo_val) + root) / 2.0
        mean[k] /= cnt
    return max_r, mean, median
