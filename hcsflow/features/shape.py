"""Object size and shape: CellProfiler 4's MeasureObjectSizeShape (``AreaShape``) features.

For every compartment label image this module measures, per object ``k`` (row ``k - 1``):

``AreaShape_*``
    Area, Perimeter, FormFactor, Eccentricity, Solidity, Extent, MajorAxisLength,
    MinorAxisLength, Orientation, Compactness, EulerNumber, ConvexArea, EquivalentDiameter,
    BoundingBoxArea, BoundingBoxMinimum/Maximum_X/Y, Center_X/Y, MaxFeretDiameter,
    MinFeretDiameter, MeanRadius, MaximumRadius, MedianRadius and the Zernike shape moments
    ``Zernike_<n>_<m>`` (``n <= zernike_degree``, ``0 <= m <= n``, ``n - m`` even; 30 for
    degree 9). With ``advanced=True`` also CellProfiler's "advanced" moment features
    (SpatialMoment, CentralMoment, NormalizedMoment, HuMoment, InertiaTensor,
    InertiaTensorEigenvalues; CellProfiler's default leaves them out, and so do we).
``Location_Center_X/Y``, ``Number_Object_Number``
    The centroid and the object number that CellProfiler's Identify modules record.

How the numbers match CellProfiler 4 (which measures through ``skimage.measure.regionprops``
and ``centrosome``; ``cp_measure`` packages the same code and is our reference):

* Area, centroid, bounding box (maximum exclusive, as regionprops' ``bbox``), Extent,
  EquivalentDiameter: from one pass over the label image.
* Second moments: central moments from sums about each object's first pixel (no cancellation
  to speak of); axis lengths are ``4 sqrt(eigenvalue)`` of the inertia tensor, eccentricity
  ``sqrt(1 - l2 / l1)``, orientation ``0.5 atan2(2 mu11, mu20 - mu02)`` in degrees: the angle
  between the row axis and the major axis (a horizontal ellipse is at +-90). When
  ``mu20 == mu02`` it is +45 for ``mu11 > 0`` and -45 otherwise, the limit of the general
  formula, as current scikit-image and cp_measure give (scikit-image before 0.19, which
  CellProfiler 4.2 pinned, had the opposite signs for this degenerate case).
* Perimeter: ``skimage.measure.perimeter(neighborhood=4)`` of the object alone: border pixels
  (a 4-neighbour outside the object) are weighted 1, sqrt(2) or (1 + sqrt(2)) / 2 by the
  pattern of their border neighbours (Benkrid & Crookes). FormFactor ``4 pi A / P^2``,
  Compactness ``P^2 / max(4 pi A, 1)``.
* EulerNumber: 8-connected objects minus 4-connected holes, from skimage's 2 x 2 bit-quad
  table, each window counted for every object that occupies it.
* ConvexArea / Solidity: regionprops' ``image_convex`` is the set of pixel centres inside or
  on the convex hull of the pixel-edge midpoints; that polygon is the hull of the pixel-centre
  hull dilated by the unit diamond, whose vertices lie on the half-pixel grid, so the pixel
  centres inside it are counted exactly with integer arithmetic, row by row.
* Feret diameters: centrosome's definitions on the convex hull of the pixel centres: the
  maximum is the largest vertex distance, the minimum the smallest caliper width (over hull
  edges, the largest distance of a vertex from the edge's line).
* Radii: the exact Euclidean distance of each pixel to the nearest pixel outside the object
  alone (other objects and the image edge count as outside, as in CellProfiler's distance
  transform of the zero-padded object crop), max / mean / median over the object. The nearest
  outside pixel is 4-adjacent to the object, so a pixel of a row run only needs the column
  distances of its run and the run's two ends: one sweep over the rows, no per-object images.
* Zernike: centrosome's moments: pixel coordinates are scaled into the minimum enclosing circle
  of the pixel centres, pixels with ``x^2 + y^2 > 1`` dropped, and the magnitude ``|sum V_nm|``
  divided by ``pi R^2``. The circle is found by a port of centrosome's own search over the
  hull vertices in centrosome's order, because the pixels on the circle are kept or dropped by
  round-off in that test: the same roles give bit-identical circles and the same pixels. The
  sums are accumulated as monomials ``sum y^a x^b`` (row sums first, so a pixel costs
  ``degree + 1`` additions) and mapped to the ``V_nm`` by a fixed matrix.

Per-pixel work is three sweeps over the label image in numba kernels (label-indexed
accumulators); per-object work (hulls, calipers, circles, lattice counts) loops over the objects
inside one numba kernel, on each object's column extents.

Deliberate differences: an object whose perimeter is 0 (one or two pixels) gets a NaN
FormFactor where CellProfiler divides by zero (inf); objects without pixels get NaN everywhere,
including ``Number_Object_Number``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numba
import numpy as np

from hcsflow.features._objects import COMPARTMENTS, Features, check_compartments, nan_absent

__all__ = ["measure_shape", "zernike_indexes"]

#: The scalar AreaShape features, in output order (Zernike and advanced moments follow).
SHAPE_FEATURES: tuple[str, ...] = (
    "Area",
    "Perimeter",
    "FormFactor",
    "Eccentricity",
    "Solidity",
    "Extent",
    "MajorAxisLength",
    "MinorAxisLength",
    "Orientation",
    "Compactness",
    "EulerNumber",
    "ConvexArea",
    "EquivalentDiameter",
    "BoundingBoxArea",
    "BoundingBoxMinimum_X",
    "BoundingBoxMinimum_Y",
    "BoundingBoxMaximum_X",
    "BoundingBoxMaximum_Y",
    "Center_X",
    "Center_Y",
    "MaxFeretDiameter",
    "MinFeretDiameter",
    "MeanRadius",
    "MaximumRadius",
    "MedianRadius",
)

_SQRT2 = math.sqrt(2.0)
# skimage.measure.perimeter: weight of a border pixel by its code
# 1 + 2 * (4-neighbours on the border) + 10 * (diagonal neighbours on the border).
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = _SQRT2
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + _SQRT2) / 2.0


def zernike_indexes(degree: int) -> np.ndarray:
    """The ``(n, m)`` pairs of the Zernike features, in output order.

    Parameters
    ----------
    degree : int
        Highest radial order ``n``.

    Returns
    -------
    ndarray of int64, shape (K, 2)
        ``n = 0..degree``, ``m = n % 2, n % 2 + 2, ..., n`` (K = 30 for degree 9).
    """
    pairs = [(n, m) for n in range(degree + 1) for m in range(n % 2, n + 1, 2)]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@functools.lru_cache(maxsize=8)
def _zernike_matrix(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear map from monomial sums ``sum y^a x^b`` to the complex Zernike sums.

    With ``z = y + i x`` (centrosome's convention) and ``rho^2 = x^2 + y^2``,
    ``V_nm = R_nm(rho) e^(i m theta) = sum_t c_t (rho^2)^((n - m)/2 - t) z^m`` where
    ``R_nm(rho) = sum_t c_t rho^(n - 2t)``; expanding the powers binomially gives each
    ``V_nm`` as a combination of monomials ``y^a x^b``, ``a + b <= degree``.

    Returns
    -------
    mono_index : ndarray of int64, shape (degree + 1, degree + 1)
        Column of monomial ``(a, b)`` (``a + b <= degree``; -1 elsewhere).
    matrix : ndarray of complex128, shape (K, M)
        Row ``t`` gives ``V`` of the ``t``-th pair of :func:`zernike_indexes`.
    """
    mono_index = np.full((degree + 1, degree + 1), -1, np.int64)
    count = 0
    for a in range(degree + 1):
        for b in range(degree + 1 - a):
            mono_index[a, b] = count
            count += 1
    pairs = zernike_indexes(degree)
    matrix = np.zeros((len(pairs), count), np.complex128)
    for row, (zn, zm) in enumerate(pairs):
        half = (zn - zm) // 2
        for t in range(half + 1):
            coeff = (
                (-1) ** t
                * math.factorial(zn - t)
                / (
                    math.factorial(t)
                    * math.factorial((zn + zm) // 2 - t)
                    * math.factorial(half - t)
                )
            )
            j = half - t  # power of rho^2
            for u in range(j + 1):  # (x^2 + y^2)^j = sum_u C(j, u) x^(2u) y^(2(j - u))
                for s in range(zm + 1):  # (y + i x)^m = sum_s C(m, s) y^(m - s) (i x)^s
                    a = 2 * (j - u) + zm - s
                    b = 2 * u + s
                    matrix[row, mono_index[a, b]] += (
                        coeff * math.comb(j, u) * math.comb(int(zm), s) * (1j**s)
                    )
    mono_index.flags.writeable = False
    matrix.flags.writeable = False
    return mono_index, matrix


# --------------------------------------------------------------------------------------------
# Per-pixel passes
# --------------------------------------------------------------------------------------------


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
    col_offset = np.zeros(n + 2, np.int64)
    for k in range(1, n + 1):
        col_offset[k + 1] = col_offset[k]
        if area[k] > 0:
            col_offset[k + 1] += cmax[k] - cmin[k] + 1
    top = np.full(col_offset[n + 1], -1, np.int64)
    bottom = np.full(col_offset[n + 1], -1, np.int64)
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
def _moments3(labels, n, cy, cx, rmin, cmin):  # pragma: no cover - compiled
    """Central moments about (cy, cx) and bounding-box-local raw moments up to order 3 per axis.

    Shape (n+1, 4, 4) each, ``[k, p, q]`` for ``sum dr^p dc^q`` (rows first, as regionprops).
    Row runs are summed over the columns first, so a pixel costs a few multiply-adds.
    """
    h, w = labels.shape
    central = np.zeros((n + 1, 4, 4), np.float64)
    raw = np.zeros((n + 1, 4, 4), np.float64)
    sc = np.empty(4, np.float64)
    sl = np.empty(4, np.float64)
    for r in range(h):
        c = 0
        while c < w:
            k = labels[r, c]
            if k == 0:
                c += 1
                continue
            sc[:] = 0.0
            sl[:] = 0.0
            while c < w and labels[r, c] == k:
                dc = c - cx[k]
                lc = float(c - cmin[k])
                sc[0] += 1.0
                sc[1] += dc
                sc[2] += dc * dc
                sc[3] += dc * dc * dc
                sl[1] += lc
                sl[2] += lc * lc
                sl[3] += lc * lc * lc
                c += 1
            sl[0] = sc[0]
            dr = r - cy[k]
            lr = float(r - rmin[k])
            pc = 1.0
            pl = 1.0
            for p in range(4):
                for q in range(4):
                    central[k, p, q] += pc * sc[q]
                    raw[k, p, q] += pl * sl[q]
                pc *= dr
                pl *= lr
    return central, raw


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
        # Feret diameters on the hull of the pixel centres
        best = 0
        for a in range(m):
            for b in range(a + 1, m):
                d2 = (hi[a] - hi[b]) ** 2 + (hj[a] - hj[b]) ** 2
                best = max(best, d2)
        feret_max[k] = math.sqrt(best)
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
            feret_min[k] = width
        ci, cj, rad = _enclosing_circle(hi, hj, m, scratch)
        circle_i[k] = ci
        circle_j[k] = cj
        circle_r[k] = rad
        # Convex image of regionprops: pixel centres in the hull of the pixel-edge midpoints.
        # In doubled coordinates the midpoints of a column's top and bottom pixels bound those
        # of the whole column; generated column by column they come sorted by (x, y).
        nd = 0
        base = col_offset[k] - cmin[k]
        for j in range(cmin[k], cmax[k] + 2):
            # x = 2j - 1: right midpoints of column j - 1 and left midpoints of column j
            lo = np.int64(1) << 40
            hi_ = -lo
            for jj in range(j - 1, j + 1):
                if cmin[k] <= jj <= cmax[k] and top[base + jj] >= 0:
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
            if j <= cmax[k] and top[base + j] >= 0:
                dx[nd] = 2 * j
                dy[nd] = 2 * top[base + j] - 1
                dx[nd + 1] = 2 * j
                dy[nd + 1] = 2 * bottom[base + j] + 1
                nd += 2
        mq = _monotone_chain(dx, dy, nd, qx, qy)
        convex_area[k] = _lattice_count(qy, qx, mq)
    return convex_area, feret_min, feret_max, circle_i, circle_j, circle_r


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


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def _hu(nu: np.ndarray) -> np.ndarray:
    """The 7 Hu invariants from normalized central moments (n, 4, 4) -> (n, 7)."""
    n20, n02, n11 = nu[:, 2, 0], nu[:, 0, 2], nu[:, 1, 1]
    n30, n03, n21, n12 = nu[:, 3, 0], nu[:, 0, 3], nu[:, 2, 1], nu[:, 1, 2]
    a, b = n30 + n12, n21 + n03
    hu = np.empty((nu.shape[0], 7))
    hu[:, 0] = n20 + n02
    hu[:, 1] = (n20 - n02) ** 2 + 4 * n11**2
    hu[:, 2] = (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2
    hu[:, 3] = a**2 + b**2
    hu[:, 4] = (n30 - 3 * n12) * a * (a**2 - 3 * b**2) + (3 * n21 - n03) * b * (3 * a**2 - b**2)
    hu[:, 5] = (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b
    hu[:, 6] = (3 * n21 - n03) * a * (a**2 - 3 * b**2) - (n30 - 3 * n12) * b * (3 * a**2 - b**2)
    return hu


def _shape_one(labels: np.ndarray, n: int, zernike_degree: int, advanced: bool) -> Features:
    """All AreaShape / Location / Number features of one label image (names without compartment)."""
    h, w = labels.shape
    padded = np.zeros((h + 2, w + 2), np.int32)
    padded[1:-1, 1:-1] = labels
    (area_i, rmin, rmax, cmin, cmax, ref, sums, perim, euler, coldist, col_offset, top, bottom) = (
        _scan(padded, n, _PERIMETER_WEIGHTS)
    )
    present = area_i > 0
    present[0] = False
    area = area_i.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dr = sums[:, 0] / area
        mean_dc = sums[:, 1] / area
        cy = ref[:, 0] + mean_dr
        cx = ref[:, 1] + mean_dc
        # second central moments from sums about the first pixel (no cancellation to speak of)
        mu20 = sums[:, 2] - sums[:, 0] * mean_dr
        mu11 = sums[:, 3] - sums[:, 0] * mean_dc
        mu02 = sums[:, 4] - sums[:, 1] * mean_dc
    cy[~present] = 0.0
    cx[~present] = 0.0

    convex_area, feret_min, feret_max, circ_i, circ_j, circ_r = _hull_features(
        n, present, cmin, cmax, col_offset, top, bottom
    )
    mono_index, zmatrix = _zernike_matrix(zernike_degree)
    # a pixel is at most half the shorter bounding-box side (rounded up) from the outside
    reach = (np.minimum(rmax - rmin, cmax - cmin) + 2) // 2
    hist_offset = np.zeros(n + 2, np.int64)
    np.cumsum(np.where(present, reach * reach + 1, 0), out=hist_offset[1:])
    hist, mono = _row_pass(
        padded, n, coldist, hist_offset, circ_i, circ_j, circ_r, zernike_degree, mono_index
    )
    max_r, mean_r, median_r = _radius_stats(n, area_i, hist_offset, hist)

    sl = slice(1, n + 1)
    a = area[sl]
    with np.errstate(invalid="ignore", divide="ignore"):
        it_rr = mu20[sl] / a  # row variance
        it_rc = mu11[sl] / a
        it_cc = mu02[sl] / a  # column variance
        half_trace = (it_rr + it_cc) / 2
        disc = np.sqrt(((it_cc - it_rr) / 2) ** 2 + it_rc**2)
        l1 = np.clip(half_trace + disc, 0.0, None)
        l2 = np.clip(half_trace - disc, 0.0, None)
        eccentricity = np.where(l1 == 0, 0.0, np.sqrt(1 - l2 / l1))
        orientation = np.where(
            it_cc - it_rr == 0,
            np.where(it_rc > 0, np.pi / 4, -np.pi / 4),
            0.5 * np.arctan2(2 * it_rc, it_rr - it_cc),
        )
        p = perim[sl]
        form_factor = np.where(p > 0, 4.0 * np.pi * a / p**2, np.nan)
        compactness = p**2 / np.maximum(4.0 * np.pi * a, 1.0)
        bbox_h = (rmax[sl] - rmin[sl] + 1).astype(np.float64)
        bbox_w = (cmax[sl] - cmin[sl] + 1).astype(np.float64)
        bbox_area = bbox_h * bbox_w
        values = {
            "Area": a,
            "Perimeter": p,
            "FormFactor": form_factor,
            "Eccentricity": eccentricity,
            "Solidity": a / convex_area[sl],
            "Extent": a / bbox_area,
            "MajorAxisLength": 4 * np.sqrt(l1),
            "MinorAxisLength": 4 * np.sqrt(l2),
            "Orientation": orientation * (180.0 / np.pi),
            "Compactness": compactness,
            "EulerNumber": euler[sl].astype(np.float64),
            "ConvexArea": convex_area[sl],
            "EquivalentDiameter": np.sqrt(4.0 * a / np.pi),
            "BoundingBoxArea": bbox_area,
            "BoundingBoxMinimum_X": cmin[sl].astype(np.float64),
            "BoundingBoxMinimum_Y": rmin[sl].astype(np.float64),
            "BoundingBoxMaximum_X": (cmax[sl] + 1).astype(np.float64),
            "BoundingBoxMaximum_Y": (rmax[sl] + 1).astype(np.float64),
            "Center_X": cx[sl].copy(),
            "Center_Y": cy[sl].copy(),
            "MaxFeretDiameter": feret_max[sl],
            "MinFeretDiameter": feret_min[sl],
            "MeanRadius": mean_r[sl],
            "MaximumRadius": max_r[sl],
            "MedianRadius": median_r[sl],
        }
        out: Features = {
            f"AreaShape_{k}": np.asarray(v, dtype=np.float64) for k, v in values.items()
        }

        # Zernike magnitudes |sum V_nm| / (pi R^2)
        zre = mono[sl] @ zmatrix.real.T  # (float @ complex takes a slow path in numpy)
        zim = mono[sl] @ zmatrix.imag.T
        score = np.sqrt(zre**2 + zim**2) / (np.pi * circ_r[sl] ** 2)[:, None]
        score[circ_r[sl] == 0] = np.nan
        for t, (zn, zm) in enumerate(zernike_indexes(zernike_degree)):
            out[f"AreaShape_Zernike_{zn}_{zm}"] = score[:, t].copy()

        if advanced:
            central, raw = _moments3(padded[1:-1, 1:-1], n, cy, cx, rmin, cmin)
            cen = central[sl]
            rw = raw[sl]
            mu00 = cen[:, 0, 0]
            nu = np.full((n, 4, 4), np.nan)
            for pp in range(4):
                for qq in range(4):
                    if pp + qq >= 2:
                        nu[:, pp, qq] = cen[:, pp, qq] / mu00 ** ((pp + qq) / 2 + 1)
            for pp in range(3):
                for qq in range(4):
                    out[f"AreaShape_SpatialMoment_{pp}_{qq}"] = rw[:, pp, qq].copy()
            for pp in range(3):
                for qq in range(4):
                    out[f"AreaShape_CentralMoment_{pp}_{qq}"] = cen[:, pp, qq].copy()
            for pp in range(4):
                for qq in range(4):
                    out[f"AreaShape_NormalizedMoment_{pp}_{qq}"] = nu[:, pp, qq].copy()
            hu = _hu(nu)
            for t in range(7):
                out[f"AreaShape_HuMoment_{t}"] = hu[:, t].copy()
            out["AreaShape_InertiaTensor_0_0"] = it_cc
            out["AreaShape_InertiaTensor_0_1"] = -it_rc
            out["AreaShape_InertiaTensor_1_0"] = -it_rc
            out["AreaShape_InertiaTensor_1_1"] = it_rr
            out["AreaShape_InertiaTensorEigenvalues_0"] = l1
            out["AreaShape_InertiaTensorEigenvalues_1"] = l2

    out["Location_Center_X"] = cx[sl].copy()
    out["Location_Center_Y"] = cy[sl].copy()
    out["Number_Object_Number"] = np.arange(1, n + 1, dtype=np.float64)
    return nan_absent(out, present[sl])


def measure_shape(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    zernike_degree: int = 9,
    advanced: bool = False,
) -> Features:
    """CellProfiler MeasureObjectSizeShape features of every object of every compartment.

    Parameters
    ----------
    image : ndarray of float32, shape (C, H, W)
        Unused (shape features depend on the label images only); accepted for the family
        signature.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Label image per compartment (``"Cells"``, ``"Nuclei"``, ``"Cytoplasm"``); object ``k``
        is output row ``k - 1``, 0 is background.
    n : int
        Number of rows (objects).
    channel_names : sequence of str
        Unused.
    zernike_degree : int, optional
        Highest Zernike order ``n`` (CellProfiler: 9, giving 30 features).
    advanced : bool, optional
        Also return CellProfiler's "advanced" moment features (spatial, central, normalized
        and Hu moments, inertia tensor and its eigenvalues). Off by default, as in CellProfiler.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_AreaShape_<Feature>``, ``<Comp>_AreaShape_Zernike_<n>_<m>``,
        ``<Comp>_Location_Center_X/Y`` and ``<Comp>_Number_Object_Number`` for each compartment
        (in the order Cells, Nuclei, Cytoplasm, then any other names in mapping order); NaN for
        objects without pixels.

    Raises
    ------
    ValueError
        On label images of different shapes, non-integer or above ``n``, or a negative
        ``zernike_degree``.
    """
    del image, channel_names
    if int(zernike_degree) != zernike_degree or zernike_degree < 0:
        raise ValueError(f"zernike_degree must be a non-negative integer, got {zernike_degree!r}")
    check_compartments(compartments, n)
    names = [c for c in COMPARTMENTS if c in compartments]
    names += [c for c in compartments if c not in COMPARTMENTS]
    out: Features = {}
    for comp in names:
        feats = _shape_one(compartments[comp], int(n), int(zernike_degree), bool(advanced))
        for key, values in feats.items():
            out[f"{comp}_{key}"] = values
    return out
