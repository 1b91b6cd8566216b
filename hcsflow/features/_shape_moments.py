"""Zernike shape moments and CellProfiler's "advanced" image moments of each object.

:func:`zernike_indexes` and :func:`_zernike_matrix` map the monomial sums ``sum y^a x^b`` of
:func:`hcsflow.features._shape_pixels._row_pass` to centrosome's Zernike magnitudes;
:func:`_moments3` sums the spatial and central moments up to order 3 per axis and :func:`_hu`
gives the seven Hu invariants (used with ``advanced=True`` only).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from hcsflow.features._objects import Features


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


def zernike_features(mono: np.ndarray, circ_r: np.ndarray, degree: int) -> Features:
    """Zernike magnitudes ``|sum V_nm| / (pi R^2)`` of objects 1..n.

    Parameters
    ----------
    mono : ndarray of float64, shape (n, M)
        Monomial sums ``sum y^a x^b`` over the pixels in each object's enclosing circle
        (column ``mono_index[a, b]`` of :func:`_zernike_matrix`).
    circ_r : ndarray of float64, shape (n,)
        Radius of each object's minimum enclosing circle (0: NaN magnitudes).
    degree : int
        Highest radial order ``n``.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``AreaShape_Zernike_<n>_<m>`` in the order of :func:`zernike_indexes`.
    """
    _, zmatrix = _zernike_matrix(degree)
    out: Features = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        zre = mono @ zmatrix.real.T  # (float @ complex takes a slow path in numpy)
        zim = mono @ zmatrix.imag.T
        score = np.sqrt(zre**2 + zim**2) / (np.pi * circ_r**2)[:, None]
    score[circ_r == 0] = np.nan
    for t, (zn, zm) in enumerate(zernike_indexes(degree)):
        out[f"AreaShape_Zernike_{zn}_{zm}"] = score[:, t].copy()
    return out


def advanced_moment_features(
    labels: np.ndarray,
    n: int,
    centre: tuple[np.ndarray, np.ndarray],
    rmin: np.ndarray,
    cmin: np.ndarray,
    inertia: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> Features:
    """CellProfiler's "advanced" AreaShape moment features of objects 1..n.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Label image (0 = background).
    n : int
        Number of objects.
    centre : tuple of ndarray of float64, shape (n + 1,)
        ``(cy, cx)`` centroid of every label.
    rmin, cmin : ndarray of int64, shape (n + 1,)
        First row and column of every label's bounding box.
    inertia : tuple of ndarray of float64, shape (n,)
        ``(it_rr, it_rc, it_cc, l1, l2)``: inertia tensor (row variance, covariance, column
        variance) and its eigenvalues.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        SpatialMoment, CentralMoment, NormalizedMoment, HuMoment, InertiaTensor and
        InertiaTensorEigenvalues, in CellProfiler's order.
    """
    cy, cx = centre
    it_rr, it_rc, it_cc, l1, l2 = inertia
    sl = slice(1, n + 1)
    out: Features = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        central, raw = _moments3(labels, n, cy, cx, rmin, cmin)
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
    return out
