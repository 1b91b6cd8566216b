"""Convex hull, Feret diameters and minimum enclosing circle of each object (numba kernels).

Per object, on the top and bottom pixel of each of its columns (from
:func:`hcsflow.features._shape_pixels._scan`): the hull of the pixel centres as centrosome
builds it, the Feret diameters on that hull, centrosome's minimum enclosing circle (the
Zernike features' unit disc) and regionprops' convex area (pixel centres inside the hull of the
pixel-edge midpoints, counted exactly in doubled integer coordinates).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _cross(o0, o1, a0, a1, b0, b1):  # pragma: no cover - compiled
    return (a0 - o0) * (b1 - o1) - (a1 - o1) * (b0 - o0)


@numba.njit(cache=True, nogil=True)
def _monotone_chain(p0, p1, npts, out0, out1):  # pragma: no cover - compiled
    """Convex hull (counter-clockwise, no collinear points) of points sorted by (p0, p1).

    Writes the vertices into ``out0/out1`` (length >= npts + 1) and returns their number.
    """
    if npts <= 2:
        for i in range(npts):
            out0[i] = p0[i]
            out1[i] = p1[i]
        if npts == 2 and p0[0] == p0[1] and p1[0] == p1[1]:
            return 1
        return npts
    m = 0
    for i in range(npts):  # lower hull
        while (
            m >= 2 and _cross(out0[m - 2], out1[m - 2], out0[m - 1], out1[m - 1], p0[i], p1[i]) <= 0
        ):
            m -= 1
        out0[m] = p0[i]
        out1[m] = p1[i]
        m += 1
    lower = m + 1
    for i in range(npts - 2, -1, -1):  # upper hull
        while (
            m >= lower
            and _cross(out0[m - 2], out1[m - 2], out0[m - 1], out1[m - 1], p0[i], p1[i]) <= 0
        ):
            m -= 1
        out0[m] = p0[i]
        out1[m] = p1[i]
        m += 1
    return m - 1  # the last point repeats the first


@numba.njit(cache=True, nogil=True)
def _angles(s0i, s0j, s1i, s1j, vi, vj):  # pragma: no cover - compiled
    """Angles S0-S1-V, S1-S0-V and S0-V-S1 of centrosome's enclosing-circle search."""
    a0 = float(s0i - s1i)
    a1 = float(s0j - s1j)
    v1i = float(vi - s1i)
    v1j = float(vj - s1j)
    v0i = float(vi - s0i)
    v0j = float(vj - s0j)
    n01 = a0 * a0 + a1 * a1
    at_s1 = abs(math.acos((a0 * v1i + a1 * v1j) / math.sqrt(n01 * (v1i * v1i + v1j * v1j))))
    at_s0 = abs(math.acos((-a0 * v0i + -a1 * v0j) / math.sqrt(n01 * (v0i * v0i + v0j * v0j))))
    return at_s1, at_s0, math.pi - at_s1 - at_s0


@numba.njit(cache=True, nogil=True)
def _enclosing_circle(hi, hj, m, order):  # pragma: no cover - compiled
    """Minimum enclosing circle of the hull vertices, as ``centrosome`` finds it.

    A port of ``centrosome.cpmorphology.minimum_enclosing_circle`` for one object (Chrystal's
    algorithm: start with the first two hull vertices as the side S, take the vertex V of
    smallest angle S0-V-S1; stop when that angle is not acute (S is a diameter) or the
    triangle is acute (circumcircle), else replace the obtuse end of S by V). The same
    vertices in the same roles give bit-identical centres and radii, which matters because
    pixels on the circle are kept or dropped by the ``r^2 > 1`` test on round-off.
    ``order`` is scratch space of length >= m. Returns (centre_i, centre_j, radius).
    """
    if m == 1:
        return float(hi[0]), float(hj[0]), 0.0
    if m == 2:
        ci = (hi[0] + hi[1]) / 2.0
        cj = (hj[0] + hj[1]) / 2.0
        return ci, cj, math.sqrt((ci - hi[0]) ** 2 + (cj - hj[0]) ** 2)
    for t in range(m):
        order[t] = t  # centrosome's "within label index": 0 is S0, 1 is S1, >= 2 a vertex
    s0 = 0
    s1 = 1
    half_pi = math.pi / 2
    for _ in range(m * m + 8):  # the search converges long before; NaN if it did not
        best = np.inf
        best_v = -1
        b_s1 = 0.0
        b_s0 = 0.0
        for v in range(m):
            if order[v] < 2:
                continue
            at_s1, at_s0, at_v = _angles(hi[s0], hj[s0], hi[s1], hj[s1], hi[v], hj[v])
            if at_v < best:
                best = at_v
                best_v = v
                b_s1 = at_s1
                b_s0 = at_s0
        if best_v < 0 or best >= half_pi:
            ci = (hi[s0] + hi[s1]) / 2.0
            cj = (hj[s0] + hj[s1]) / 2.0
            return ci, cj, math.sqrt(float((hi[s0] - hi[s1]) ** 2 + (hj[s0] - hj[s1]) ** 2)) / 2
        if b_s1 <= half_pi and b_s0 <= half_pi:
            # circumcircle of S0, S1, V (centrosome's formula; Y = i, X = j)
            y0, x0 = float(hi[s0]), float(hj[s0])
            y1, x1 = float(hi[s1]), float(hj[s1])
            yv, xv = float(hi[best_v]), float(hj[best_v])
            d = 2 * (x0 * (y1 - yv) + x1 * (yv - y0) + xv * (y0 - y1))
            q0 = x0 * x0 + y0 * y0
            q1 = x1 * x1 + y1 * y1
            qv = xv * xv + yv * yv
            cx = (q0 * (y1 - yv) + q1 * (yv - y0) + qv * (y0 - y1)) / d
            cy = (q0 * (xv - x1) + q1 * (x0 - xv) + qv * (x1 - x0)) / d
            return cy, cx, math.sqrt((y0 - cy) ** 2 + (x0 - cx) ** 2)
        if b_s0 > half_pi:
            order[s0] = order[best_v]
            s0 = best_v
            order[best_v] = 0
        else:
            order[s1] = order[best_v]
            s1 = best_v
            order[best_v] = 1
    return np.nan, np.nan, np.nan


@numba.njit(cache=True, nogil=True)
def _lattice_count(q0, q1, m):  # pragma: no cover - compiled
    """Number of integer points inside or on a convex polygon given in doubled coordinates."""
    ymin = q0[0]
    ymax = q0[0]
    for i in range(1, m):
        ymin = min(ymin, q0[i])
        ymax = max(ymax, q0[i])
    total = 0
    r_lo = -((-ymin) // 2)  # ceil(ymin / 2)
    r_hi = ymax // 2
    big = np.int64(1) << 60
    for r in range(r_lo, r_hi + 1):
        y = 2 * r
        lo = big
        hi = -big
        for i in range(m):
            a0, a1 = q0[i], q1[i]
            b0, b1 = q0[(i + 1) % m], q1[(i + 1) % m]
            if a0 == b0:
                if a0 == y:
                    lo = min(lo, -((-min(a1, b1)) // 2))
                    hi = max(hi, max(a1, b1) // 2)
                continue
            if (y < a0 and y < b0) or (y > a0 and y > b0):
                continue
            # x = a1 + (y - a0) (b1 - a1) / (b0 - a0); pixel column c with 2c in [lo, hi]
            num = a1 * (b0 - a0) + (y - a0) * (b1 - a1)
            den = 2 * (b0 - a0)
            if den < 0:
                num = -num
                den = -den
            lo = min(lo, -((-num) // den))
            hi = max(hi, num // den)
        if hi >= lo:
            total += hi - lo + 1
    return total


@numba.njit(cache=True, nogil=True)
def _feret(hi, hj, m):  # pragma: no cover - compiled
    """Maximum and minimum Feret diameter of a convex hull of ``m`` vertices ``(hi, hj)``.

    As centrosome defines them: the largest vertex distance, and the smallest caliper width
    over the hull's edges (the largest distance of a vertex from the edge's line); the
    minimum is 0 for fewer than three vertices.
    """
    best = 0
    for a in range(m):
        for b in range(a + 1, m):
            d2 = (hi[a] - hi[b]) ** 2 + (hj[a] - hj[b]) ** 2
            best = max(best, d2)
    feret_max = math.sqrt(best)
    feret_min = 0.0
    if m >= 3:
        width = np.inf
        for a in range(m):
            b = (a + 1) % m
            e0 = hi[b] - hi[a]
            e1 = hj[b] - hj[a]
            far = 0
            for v in range(m):
                cr = abs(e0 * (hj[v] - hj[a]) - e1 * (hi[v] - hi[a]))
                far = max(far, cr)
            width = min(width, far / math.sqrt(e0 * e0 + e1 * e1))
        feret_min = width
    return feret_max, feret_min


@numba.njit(cache=True, nogil=True)
def _convex_area(c0, c1, offset, top, bottom, dx, dy, qx, qy):  # pragma: no cover - compiled
    """Convex area of one object as regionprops counts it (``image_convex``).

    The object spans columns ``c0..c1``; ``top[offset + t]`` and ``bottom[offset + t]`` are its
    first and last row in column ``c0 + t`` (-1 for none). ``dx, dy`` (length >= 4 columns + 4)
    and ``qx, qy`` (one more) are scratch space.

    The count is of the pixel centres in the hull of the pixel-edge midpoints: in doubled
    coordinates the midpoints of a column's top and bottom pixels bound those of the whole
    column; generated column by column they come sorted by (x, y).
    """
    nd = 0
    base = offset - c0
    for j in range(c0, c1 + 2):
        # x = 2j - 1: right midpoints of column j - 1 and left midpoints of column j
        lo = np.int64(1) << 40
        hi_ = -lo
        for jj in range(j - 1, j + 1):
            if c0 <= jj <= c1 and top[base + jj] >= 0:
                lo = min(lo, 2 * top[base + jj])
                hi_ = max(hi_, 2 * bottom[base + jj])
        if hi_ >= lo:
            dx[nd] = 2 * j - 1
            dy[nd] = lo
            nd += 1
            if hi_ != lo:
                dx[nd] = 2 * j - 1
                dy[nd] = hi_
                nd += 1
        # x = 2j: top and bottom midpoints of column j
        if j <= c1 and top[base + j] >= 0:
            dx[nd] = 2 * j
            dy[nd] = 2 * top[base + j] - 1
            dx[nd + 1] = 2 * j
            dy[nd + 1] = 2 * bottom[base + j] + 1
            nd += 2
    mq = _monotone_chain(dx, dy, nd, qx, qy)
    return _lattice_count(qy, qx, mq)


@numba.njit(cache=True, nogil=True)
def _hull_features(n, present, cmin, cmax, col_offset, top, bottom):  # pragma: no cover
    """Convex area, Feret diameters and minimum enclosing circle (centre, radius) per object.

    The hull of the pixel centres is built as centrosome builds it (monotone chain over the
    top and bottom pixel of every column, x = column, y = row, counter-clockwise from the
    first column's top pixel, collinear points dropped), so that the enclosing-circle search
    sees the vertices in centrosome's order.
    """
    convex_area = np.zeros(n + 1, np.float64)
    feret_max = np.zeros(n + 1, np.float64)
    feret_min = np.zeros(n + 1, np.float64)
    circle_i = np.zeros(n + 1, np.float64)
    circle_j = np.zeros(n + 1, np.float64)
    circle_r = np.zeros(n + 1, np.float64)
    max_cols = 1
    for k in range(1, n + 1):
        if present[k]:
            max_cols = max(max_cols, cmax[k] - cmin[k] + 1)
    pi_ = np.empty(2 * max_cols, np.int64)
    pj_ = np.empty(2 * max_cols, np.int64)
    hi = np.empty(2 * max_cols + 1, np.int64)
    hj = np.empty(2 * max_cols + 1, np.int64)
    scratch = np.empty(2 * max_cols + 1, np.int64)
    dx = np.empty(4 * max_cols + 4, np.int64)
    dy = np.empty(4 * max_cols + 4, np.int64)
    qx = np.empty(4 * max_cols + 5, np.int64)
    qy = np.empty(4 * max_cols + 5, np.int64)
    for k in range(1, n + 1):
        if not present[k]:
            continue
        npts = 0  # candidate points sorted by (column, row): each column's top and bottom pixel
        for t in range(cmax[k] - cmin[k] + 1):
            first_row = top[col_offset[k] + t]
            if first_row < 0:
                continue
            last_row = bottom[col_offset[k] + t]
            pj_[npts] = cmin[k] + t
            pi_[npts] = first_row
            npts += 1
            if last_row != first_row:
                pj_[npts] = cmin[k] + t
                pi_[npts] = last_row
                npts += 1
        m = _monotone_chain(pj_, pi_, npts, hj, hi)
        feret_max[k], feret_min[k] = _feret(hi, hj, m)
        ci, cj, rad = _enclosing_circle(hi, hj, m, scratch)
        circle_i[k] = ci
        circle_j[k] = cj
        circle_r[k] = rad
        convex_area[k] = _convex_area(cmin[k], cmax[k], col_offset[k], top, bottom, dx, dy, qx, qy)
    return convex_area, feret_min, feret_max, circle_i, circle_j, circle_r
