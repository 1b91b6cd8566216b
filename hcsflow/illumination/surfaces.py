"""Smooth surfaces on the working grid: low-frequency cosine series and their robust means.

A flat-field or dark-field is represented by its DCT-II coefficients on the working grid, up
to a radial cutoff in cycles per field (:func:`_lowpass_mask`), and evaluated at every pixel
of the full grid (:func:`_evaluate`). :func:`_shrunk_mean` smooths a weighted mean over fields
by shrinking each coefficient to its reliability.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy.stats import chi2

#: Groups of fields (field ``n`` in group ``n % GROUPS``) of the reliability and jackknife
#: estimates of the ``basic`` fit.
GROUPS = 10
#: Rings of cosine coefficients (half a cycle per field wide) tested on their own for a
#: surface, and the level of that test (:func:`_surface_found`).
LOW_RINGS = 2
LOW_P = 1e-3


def _lowpass_mask(shape: tuple[int, int], max_frequency: float) -> np.ndarray:
    """Boolean mask of the DCT-II coefficients kept (radial cutoff in cycles per field)."""
    h, w = shape
    u = np.arange(h)[:, None] / 2.0  # DCT index u is u/2 cycles across the field
    v = np.arange(w)[None, :] / 2.0
    return (u**2 + v**2) <= max_frequency**2


def _coeffs(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sfft.dctn(img.astype(np.float64), norm="ortho") * mask


def _surface(coef: np.ndarray) -> np.ndarray:
    return sfft.idctn(coef, norm="ortho")


def _evaluate(coef: np.ndarray, small_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Evaluate a cosine series fitted on the working grid at every pixel of the full grid.

    The working grid cell ``i`` covers full-size pixels ``[i*H/h, (i+1)*H/h)``; a full-size
    pixel centre ``Y`` sits at working coordinate ``(Y + 0.5) * h / H - 0.5``.
    """
    (h, w), (hh, ww) = small_shape, shape
    rows = np.flatnonzero(np.abs(coef).sum(axis=1) > 0)
    cols = np.flatnonzero(np.abs(coef).sum(axis=0) > 0)
    if rows.size == 0:
        return np.zeros(shape)
    ku, kv = rows.max() + 1, cols.max() + 1

    def basis(n_small: int, n_full: int, k: int) -> np.ndarray:
        y = (np.arange(n_full) + 0.5) * n_small / n_full - 0.5
        u = np.arange(k)
        b = np.cos(np.pi * u[None, :] * (2 * y[:, None] + 1) / (2 * n_small))
        b *= np.sqrt(2.0 / n_small)
        b[:, 0] = np.sqrt(1.0 / n_small)
        return b

    by = basis(h, hh, ku)
    bx = basis(w, ww, kv)
    return by @ coef[:ku, :kv] @ bx.T


def _smooth(img: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Project a flattened surface (h*w,) onto the kept cosine series; flattened result."""
    return _surface(_coeffs(img.reshape(shape), mask)).ravel()


def _ring_index(shape: tuple[int, int]) -> np.ndarray:
    """Ring of every DCT-II coefficient: ``floor`` of its radial index (half-cycle wide rings)."""
    h, w = shape
    return np.floor(np.hypot(np.arange(h)[:, None], np.arange(w)[None, :])).astype(np.int64)


def _biweight(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tukey biweight of scaled residuals ``u``: the weight ``w`` and the slope ``(u w)'``.

    ``w = (1 - u^2)^2`` and ``d(u w)/du = (1 - u^2)(1 - 5 u^2)`` for ``|u| < 1``, both 0 beyond.
    """
    inside = np.abs(u) < 1.0
    u2 = u * u
    t = 1.0 - u2
    w = np.where(inside, t * t, 0.0)
    t *= 1.0 - 5.0 * u2
    dw = np.where(inside, t, 0.0)
    return w, dw


def _shrunk_mean(
    values: np.ndarray,
    weights: np.ndarray,
    slopes: np.ndarray,
    fallback: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    groups: int = GROUPS,
    surface: bool | None = None,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """A weighted mean over fields, smoothed by shrinking each cosine coefficient to its reliability.

    The raw surface is the weighted mean ``m = sum(w X) / sum(w)`` over fields. Its cosine
    coefficients ``c_k`` (those kept by ``mask``) have a sampling variance ``v_k`` estimated
    from ``K`` groups of fields (field ``n`` in group ``n % K``): the influence of group ``g``
    on the surface is ``sum_g w (X - m) / sum(w')`` with ``w'`` the slope of the robust
    estimator's influence function (``w`` for a plain weighted mean; smaller for Tukey
    biweights, whose weights shrink with the residual, which makes the robust mean noisier
    than its weights alone say: the sandwich variance of an M-estimator), and
    ``v_k = K / (K - 1)`` times the sum of squares over groups of the influences' coefficients.
    The variances are pooled over rings of equal spatial frequency (the noise of a mean of
    fields -- the specimen's background texture, the remains of cells -- depends on the
    frequency, not on the orientation). Each coefficient is kept with the positive-part
    James-Stein factor ``max(0, 1 - v_k / c_k^2)``: a coefficient that the fields determine well
    is kept whole, one that is mostly noise drops out. The mean (``c_0``) is kept as is. The
    smoothness thus follows the data; ``mask`` is its upper bound.

    Before the shrinkage, the surface is tested against a constant (:func:`_surface_found`);
    when the fields show no surface beyond their noise, the constant ``c_0`` is returned (a
    uniform illumination is then left exactly uniform, not shaded by the noise that survives
    the coefficient-wise shrinkage). ``surface`` given (True or False) skips the test and
    keeps that decision. A reweighting loop keeps a surface that the lowest rings alone showed
    on its first pass (the second value returned): later passes weigh the fields by residuals
    from the surface of the pass before, so a constant surface down-weights the very pixels
    (the dim corners) that show a weak shading, and the evidence for it fades pass by pass. A
    surface found only by the test over all coefficients is tested again on every pass (a
    first pass, weighted by the starting surface, is noisier than the later ones).

    Parameters
    ----------
    values, weights, slopes : ndarray of shape (N, P)
        Per-field values ``X``, their weights ``w`` and influence slopes ``w'``.
    fallback : ndarray of shape (P,)
        Value at pixels with no weight.
    mask : ndarray of shape (h, w), bool
        Coefficients allowed.
    shape : tuple of int
        ``(h, w)`` with ``h * w == P``.
    groups : int
        Number of groups of fields ``K`` (at most ``N``; below 3 no shrinkage).
    surface : bool, optional
        The decision of the test, given: True keeps the shrunk surface, False returns the
        constant. Default: test.
    extra : ndarray of shape (h, w), optional
        Variance added to each coefficient's: noise common to all fields, which their groups
        do not see (the error of a dark-field pattern subtracted from every field, divided by
        the baselines), counts in the test and the shrinkage.

    Returns
    -------
    smoothed : ndarray of shape (P,)
    hold : bool
        Whether later passes should keep the surface without testing: ``surface`` was given
        True, or the lowest rings alone showed it.
    """
    coef, vr = _coefficients_and_variances(values, weights, slopes, fallback, mask, shape, groups)
    if vr is None:
        return _surface(coef).ravel(), False
    if extra is not None:
        vr = vr + extra
    ring = _ring_index(shape)
    sel = _beyond_mean(mask)
    c2 = coef * coef
    hold = bool(surface)
    if surface is None:
        z = np.zeros_like(c2)
        z[sel] = c2[sel] / np.maximum(vr[sel], 1e-300)
        surface, hold = _surface_found(z, ring, sel)
    if not surface:
        factor = np.zeros_like(coef)
    else:
        factor = np.where(c2 > 0, np.clip(1.0 - vr / np.where(c2 > 0, c2, 1.0), 0.0, 1.0), 0.0)
    factor[0, 0] = 1.0
    return _surface(coef * factor).ravel(), hold


def _coefficients_and_variances(
    values: np.ndarray,
    weights: np.ndarray,
    slopes: np.ndarray,
    fallback: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    groups: int = GROUPS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The cosine coefficients of a weighted mean over fields and their sampling variances.

    As described in :func:`_shrunk_mean` (group influences, the M-estimator's sandwich,
    pooled over rings of equal frequency); the arguments are its own.

    Returns
    -------
    coef : ndarray of shape (h, w)
        Coefficients of the raw weighted mean (0 outside ``mask``).
    var : ndarray of shape (h, w) or None
        Pooled sampling variance of each coefficient (``None`` with fewer than 3 groups).
    """
    n = values.shape[0]
    wsum = weights.sum(axis=0)
    raw = np.where(wsum > 0, (weights * values).sum(axis=0) / np.maximum(wsum, 1e-12), fallback)
    coef = _coeffs(raw.reshape(shape), mask)
    k = min(groups, n)
    if k < 3:
        return coef, None
    # the sandwich's denominator, kept from vanishing where most values are outliers
    den = np.maximum(slopes.sum(axis=0), 0.1 * wsum)
    contrib = weights * (values - raw)
    infl = np.stack([contrib[j::k].sum(axis=0) for j in range(k)])
    infl = np.where(den > 0, infl / np.maximum(den, 1e-12), 0.0)
    ic = sfft.dctn(infl.reshape(k, *shape), axes=(1, 2), norm="ortho") * mask
    var = k / (k - 1) * ((ic - ic.mean(axis=0)) ** 2).sum(axis=0)
    return coef, _pool_rings(var, mask)


def _beyond_mean(mask: np.ndarray) -> np.ndarray:
    """The coefficients of ``mask`` (shape (h, w), bool) besides the mean ``[0, 0]``."""
    sel = mask.copy()
    sel[0, 0] = False
    return sel


def _pool_rings(var: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-coefficient variances averaged over each ring of equal spatial frequency.

    Parameters
    ----------
    var : ndarray of shape (h, w)
        A variance per cosine coefficient.
    mask : ndarray of shape (h, w), bool
        Coefficients kept; the mean (``[0, 0]``) and those outside take no part.

    Returns
    -------
    ndarray of shape (h, w)
        Each coefficient's ring mean (0 for a ring with no coefficient kept).
    """
    ring = _ring_index(var.shape)
    sel = _beyond_mean(mask)
    pooled = np.bincount(ring[sel], var[sel], minlength=ring.max() + 1)
    count = np.bincount(ring[sel], minlength=ring.max() + 1)
    return np.where(count > 0, pooled / np.maximum(count, 1), 0.0)[ring]


def _coefficient_noise(noise: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Noise variance of each cosine coefficient of a surface, from one noise realisation.

    Parameters
    ----------
    noise : ndarray of shape (P,)
        A surface's error (e.g. half the difference of two half-sample estimates).
    mask : ndarray of shape (h, w), bool
        Coefficients kept.
    shape : tuple of int
        ``(h, w)`` with ``h * w == P``.

    Returns
    -------
    ndarray of shape (h, w)
        The squared coefficients of ``noise`` pooled over rings (:func:`_pool_rings`); 0 for
        the mean and outside ``mask``.
    """
    return _pool_rings(_coeffs(noise.reshape(shape), mask) ** 2, mask) * _beyond_mean(mask)


def _surface_noise(
    values: np.ndarray,
    weights: np.ndarray,
    slopes: np.ndarray,
    smoothed: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    groups: int = GROUPS,
) -> float:
    """RMS error per pixel of a surface :func:`_shrunk_mean` made from these fields.

    Each coefficient ``c_k`` of the raw mean beyond the mean keeps the share ``f_k`` in
    ``smoothed``: its noise variance is ``f_k^2 v_k`` (``v_k`` from
    :func:`_coefficients_and_variances`) and its shrinkage bias ``(1 - f_k) c_true``, with
    ``c_true^2`` estimated by ``max(c_k^2 - v_k, 0)``; the cosine basis is orthonormal, so the
    RMS per pixel is ``sqrt(sum (f_k^2 v_k + (1 - f_k)^2 max(c_k^2 - v_k, 0)) / P)``.

    Parameters
    ----------
    values, weights, slopes : ndarray of shape (N, P)
        As in :func:`_shrunk_mean`.
    smoothed : ndarray of shape (P,)
        The surface it returned from them.
    mask, shape, groups
        As in :func:`_shrunk_mean`.

    Returns
    -------
    float
        In the units of ``values``; 0 with fewer than 3 groups.
    """
    coef, vr = _coefficients_and_variances(values, weights, slopes, smoothed, mask, shape, groups)
    if vr is None:
        return 0.0
    kept = _coeffs(smoothed.reshape(shape), mask)
    factor = np.where(coef != 0, kept / np.where(coef != 0, coef, 1.0), 0.0).clip(0.0, 1.0)
    sel = _beyond_mean(mask)
    f, v, c2 = factor[sel], vr[sel], coef[sel] ** 2
    mse = f * f * v + (1.0 - f) ** 2 * np.maximum(c2 - v, 0.0)
    return float(np.sqrt(mse.sum() / smoothed.size))


def _surface_found(z: np.ndarray, ring: np.ndarray, sel: np.ndarray) -> tuple[bool, bool]:
    """Do the cosine coefficients show a surface beyond their noise?

    Under a constant surface, ``T = sum_k c_k^2 / v_k`` over ``m`` coefficients is about
    chi-squared with ``m`` degrees of freedom. Two tests, either of which finds a surface:
    all ``m`` coefficients besides the mean (``T >= m + 3 sqrt(2 m)``, about p = 0.004), and
    the coefficients of the lowest :data:`LOW_RINGS` rings alone (below 1.5 cycles per field,
    where vignetting and tilts put nearly all their power; ``p < LOW_P``). The second keeps a
    weak shading (a 10 % fall-off to the corners) that the first dilutes among the higher
    frequencies' noise.

    Parameters
    ----------
    z : ndarray of shape (h, w)
        ``c_k^2 / v_k`` per coefficient.
    ring : ndarray of shape (h, w), int
        Ring of each coefficient (:func:`_ring_index`).
    sel : ndarray of shape (h, w), bool
        Coefficients tested (those kept, besides the mean).

    Returns
    -------
    found : bool
        Either test found a surface.
    low : bool
        The lowest rings' test found it.
    """
    m = int(sel.sum())
    if m == 0:
        return False, False
    low = sel & (ring <= LOW_RINGS)
    m_low = int(low.sum())
    by_low = m_low > 0 and float(z[low].sum()) >= float(chi2.isf(LOW_P, m_low))
    by_all = float(z[sel].sum()) >= m + 3.0 * math.sqrt(2.0 * m)
    return by_all or by_low, by_low


def _jackknife_variance(estimates: np.ndarray) -> float:
    """Delete-a-group jackknife variance from the ``K`` leave-one-group-out estimates.

    Parameters
    ----------
    estimates : ndarray of shape (K,)
        The estimate recomputed with each group of fields left out.

    Returns
    -------
    float
        ``(K - 1) / K * sum((estimates - mean) ** 2)``.
    """
    k = estimates.shape[0]
    return (k - 1) / k * float(((estimates - estimates.mean()) ** 2).sum())


def smooth_surface(
    image: np.ndarray, shape: tuple[int, int], max_frequency: float = 4.0
) -> np.ndarray:
    """An image on the working grid projected onto the smooth cosine series, at full size.

    Parameters
    ----------
    image : ndarray of shape (h, w)
        A surface on the working grid.
    shape : tuple of int
        The full-size shape ``(H, W)``.
    max_frequency : float
        Highest spatial frequency kept, in cycles per field.

    Returns
    -------
    ndarray of shape (H, W), float64
    """
    small_shape = (int(image.shape[0]), int(image.shape[1]))
    mask = _lowpass_mask(small_shape, max_frequency)
    return _evaluate(_coeffs(image, mask), small_shape, shape)
