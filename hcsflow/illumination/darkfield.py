"""The dark-field of the ``basic`` fit: its level, its spatial pattern, and the contrast test.

The dark level comes from the fields' own variation (a field's shading contrast grows with
its brightness above it, :func:`_dark_level_fit`); the spatial pattern from the camera's noise
law (:func:`_noise_pattern`) or from the variation of the fields' baselines
(:func:`_dark_pattern`), kept in proportion to its split-half reliability (:func:`_reliable`).
The fields centred on their mean carry the flat-field's contrast free of the dark-field
(:func:`_centred_contrast`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hcsflow.illumination.surfaces import (
    GROUPS,
    _biweight,
    _jackknife_variance,
    _shrunk_mean,
    _smooth,
)

#: Cells of the working grid whose background lies fewer than this many noise SDs above 0
#: give no noise cumulants to :func:`_cumulant_level`: a camera clips its values at 0, which
#: cuts the noise's lower tail and biases its third cumulant (Gaussian noise clipped 3 SD
#: below its mean gains a third moment of about 0.01 SD^3, a few per cent of the photon
#: noise's on a dim background; clipped 5 SD below, less than 1e-5 SD^3).
CLIP_SD = 5.0


def _median_and_mad(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median across fields and median absolute deviation from it (unscaled).

    Parameters
    ----------
    Y : ndarray of shape (N, P)

    Returns
    -------
    med, mad : ndarray of shape (P,)
        The values of ``np.median(Y, axis=0)`` and ``np.median(np.abs(Y - med), axis=0)``.
    """
    t = np.ascontiguousarray(Y.T, dtype=np.float64)
    t.sort(axis=1)
    return _sorted_median_and_mad(t)


def _sorted_median_and_mad(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_median_and_mad` of pixels whose values across fields are sorted.

    The ``k + 1`` values of a pixel closest to its median are ``k + 1`` consecutive sorted
    values, so the ``k``-th smallest absolute deviation is the least, over the windows of
    ``k + 1`` consecutive values, of the window's largest deviation (its first or last value).
    Even counts give the mean of the two middle order statistics, as ``np.median`` does.

    Parameters
    ----------
    t : ndarray of shape (P, N)
        Each row sorted ascending.

    Returns
    -------
    med, mad : ndarray of shape (P,)
    """
    m = t.shape[1]
    ranks = (m // 2,) if m % 2 else (m // 2 - 1, m // 2)
    med = t[:, ranks[0]] if m % 2 else (t[:, ranks[0]] + t[:, ranks[1]]) / 2.0
    c = med[:, None]
    dev = [np.minimum.reduce(np.maximum(c - t[:, : m - k], t[:, k:] - c), axis=1) for k in ranks]
    mad = dev[0] if m % 2 else (dev[0] + dev[1]) / 2.0
    return med, mad


def _masked_median(Q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel median across fields of the valid values; NaN where none is valid.

    The values of ``np.nanmedian(np.where(valid, Q, np.nan), axis=0)`` (the mean of the two
    middle values for an even count), from one sort of the contiguous rows of the transposed
    stack.

    Parameters
    ----------
    Q : ndarray of shape (N, P)
        Finite where ``valid``.
    valid : ndarray of shape (N, P), bool

    Returns
    -------
    ndarray of shape (P,)
    """
    t = np.where(valid, Q, np.inf).T.copy()
    t.sort(axis=1)
    count = valid.sum(axis=0)
    high = count // 2
    low = np.where(count % 2 == 1, high, high - 1)
    rows = np.arange(t.shape[0])
    last = t.shape[1] - 1
    med = (t[rows, np.clip(low, 0, last)] + t[rows, np.clip(high, 0, last)]) / 2.0
    med[count == 0] = np.nan
    return med


def _dark_level(Y: np.ndarray, M: np.ndarray) -> float:
    """Constant dark level from the fields' own variation; :func:`_dark_level_fit`'s level."""
    return _dark_level_fit(Y, M)[0]


def _jackknife_levels(Y: np.ndarray, M: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """:func:`_dark_level` of the fields without each group, from one sort of the pixels.

    Parameters
    ----------
    Y : ndarray of shape (N, P)
    M : ndarray of shape (P,)
        As in :func:`_dark_level_fit`.
    groups : ndarray of shape (N,), int
        Group of each field, ``0 .. k - 1``.

    Returns
    -------
    ndarray of shape (k,)
        The level without group ``g`` at index ``g``.
    """
    t = np.ascontiguousarray(Y.T, dtype=np.float64)
    order = np.argsort(t, axis=1, kind="stable")
    t = np.take_along_axis(t, order, axis=1)
    labels = groups.astype(np.min_scalar_type(int(groups.max())))[order]
    del order
    p = t.shape[0]
    levels = []
    for g in range(int(groups.max()) + 1):
        keep = groups != g
        # a pixel's sorted values less those of group g, still sorted
        rest = t[labels != g].reshape(p, int(keep.sum()))
        levels.append(_dark_level_fit(Y[keep], M, _sorted_median_and_mad(rest))[0])
    return np.array(levels)


def _dark_level_fit(
    Y: np.ndarray, M: np.ndarray, spread: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[float, str]:
    """Constant dark level from the fields' own variation (BaSiC's contrast regression).

    The contrast of field ``n`` along the shading pattern ``u = S - 1`` grows linearly with
    its mean brightness above the dark level, ``c_n = k (m_n - d0)``; ``d0`` is the intercept of
    that regression, iterated with ``S = (M - d0) / mean(M - d0)`` and bounded to
    ``[0, min Y]`` (the dark level cannot exceed the darkest value of the stack). When the
    slope is not significant (t < 3: a uniform flat-field), the bound ``min Y`` is returned.
    Values above their pixel's median + 2 MAD across fields are clipped first.

    Parameters
    ----------
    Y : ndarray of shape (N, P)
        The downsampled stack, one flattened field per row.
    M : ndarray of shape (P,)
        Smoothed per-pixel median across fields.
    spread : (ndarray of shape (P,), ndarray of shape (P,)), optional
        :func:`_median_and_mad` of ``Y`` when already known.

    Returns
    -------
    level : float
        The dark level, raw units.
    how : str
        ``"regression"`` (the intercept of the regression), ``"bound"`` (the intercept lay
        above the darkest value, which was used) or ``"no_slope"`` (the contrast did not grow
        significantly with brightness: the level is not determined, the bound was used).
    """
    p = Y.shape[1]
    upper = float(Y.min())
    # bright objects reach the field edges less often than the centre, so they add more
    # shading contrast per unit of brightness than the background: clip every value at its
    # pixel's median + 2 MAD across fields, which bounds their share of both quantities
    med, mad = _median_and_mad(Y) if spread is None else spread
    Y = np.minimum(Y, med + 2.0 * (1.4826 * mad))
    m_n = Y.mean(axis=1)
    d0 = upper  # without a shading pattern to regress on, the darkest value is the best bound
    how = "no_slope"
    for _ in range(10):
        u = M - d0
        if not u.mean() > 0:
            break
        u = u / u.mean() - 1.0
        c_n = Y @ u / p
        A = np.stack([m_n, np.ones_like(m_n)], axis=1)
        (slope, icpt), *_ = np.linalg.lstsq(A, c_n, rcond=None)
        # a contrast that does not grow significantly with brightness (a uniform flat-field)
        # leaves nothing to regress on: keep the bound
        resid = c_n - A @ np.array([slope, icpt])
        dof = max(len(c_n) - 2, 1)
        sxx = float(np.sum((m_n - m_n.mean()) ** 2))
        se = np.sqrt(float(resid @ resid) / dof / sxx) if sxx > 0 else np.inf
        if not slope > 3.0 * se:
            d0, how = upper, "no_slope"
            break
        new = float(np.clip(-icpt / slope, 0.0, upper))
        how = "bound" if -icpt / slope >= upper else "regression"
        if abs(new - d0) < 1e-3 * max(1.0, abs(d0)):
            d0 = new
            break
        d0 = new
    return max(d0, 0.0), how


def _dark_pattern(
    Y: np.ndarray,
    S: np.ndarray,
    b: np.ndarray,
    W: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Spatial pattern of the dark-field from the variation of the field baselines.

    At every pixel, ``Y_n / b_n = S + D / b_n``: a weighted regression over fields of
    ``Y_n / b_n`` on ``1 / b_n`` has slope ``D(x)``. The slope surface is smoothed and stripped
    of its mean and of its component along the flat-field's shading ``S - 1``: that component
    is not identifiable (``b_n + c`` with ``D - c S`` fits the data equally), so the dark-field
    pattern is taken to share no shading with the flat-field.

    Returns
    -------
    ndarray of shape (P,)
        Mean 0, orthogonal to ``S - 1``.
    """
    ok = b > 0
    t = np.where(ok, 1.0 / np.where(ok, b, 1.0), 0.0)[:, None]
    z = Y * t
    Wk = W * ok[:, None]
    sw = Wk.sum(axis=0)
    st = (Wk * t).sum(axis=0)
    stt = (Wk * t * t).sum(axis=0)
    sz = (Wk * z).sum(axis=0)
    stz = (Wk * t * z).sum(axis=0)
    det = sw * stt - st * st
    good = det > 1e-12 * np.maximum(sw * stt, 1e-300)
    slope = np.where(good, (sw * stz - st * sz) / np.where(good, det, 1.0), 0.0)
    if not good.any():
        return np.zeros_like(S)
    slope = np.where(good, slope, np.median(slope[good]))
    P = _smooth(slope, mask, shape)
    P -= P.mean()
    u = S - 1.0
    uu = float(u @ u)
    if uu > 0:
        P -= (float(P @ u) / uu) * u
    return P


def _noise_pattern(
    Y: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    adaptive: bool = True,
    groups: int = GROUPS,
) -> np.ndarray | None:
    """Spatial pattern of the dark-field from the noise law of the camera.

    Photon (shot) noise grows with the light collected while the camera offset adds none:
    the local noise variance follows ``V = g (Y - D(x)) + r^2`` (Poisson-Gaussian model; ``g``
    the gain in raw units per photo-electron, ``r`` the read noise). With ``g`` fitted over the
    specimen's background (weights ``W``, then Tukey biweights on ``Y - V / g`` against its
    per-pixel median, which down-weight the specimen's texture and the edges of objects),
    ``Y - V / g = D(x) - r^2 / g`` at every pixel of every field; its weighted mean over fields,
    smoothed and stripped of its mean, is the pattern. Unlike the baselines' variation, the
    noise law also sees the part of the dark-field that follows the flat-field's shading.

    Parameters
    ----------
    Y : ndarray of shape (N, P)
        Downsampled fields.
    V : ndarray of shape (N, P)
        Local noise variance of each field (:class:`FieldStats` ``noise``).
    W : ndarray of shape (N, P)
        Weights of the background (0 on the sparse part).
    mask : ndarray of shape (h, w), bool
        Cosine coefficients kept.
    shape : tuple of int
        ``(h, w)``.
    adaptive : bool
        Smooth by :func:`_shrunk_mean` (coefficients shrunk by their reliability over
        ``groups`` groups of fields) rather than by keeping every coefficient of ``mask``.
    groups : int
        Groups of fields of the reliability estimate.

    Returns
    -------
    ndarray of shape (P,), or None
        Mean 0; ``None`` when the noise does not grow with the signal.
    """
    Wv = W * np.isfinite(V)
    if not Wv.any():
        return None
    Vf = np.where(np.isfinite(V), V, 0.0)
    Wq = Wv
    for _ in range(3):
        # gain: weighted regression of the local variance on the intensity
        sw = Wq.sum()
        my = (Wq * Y).sum() / sw
        mv = (Wq * Vf).sum() / sw
        cov = (Wq * (Y - my) * (Vf - mv)).sum()
        var = (Wq * (Y - my) ** 2).sum()
        if not (var > 0 and cov > 0):
            return None
        Q = Y - Vf * (var / cov)
        # the specimen's texture and the edges of objects raise the local variance:
        # down-weight values of Q far from their pixel's median (Tukey biweight)
        med = _masked_median(Q, Wv > 0)
        if not np.isfinite(med).any():
            return None
        med = np.where(np.isfinite(med), med, np.nanmedian(med))
        R = Q - med
        scale = 1.4826 * float(np.median(np.abs(R[Wv > 0])))
        if not scale > 0:
            return None
        bw, dbw = _biweight(R / (4.685 * scale))
        Wq = Wv * bw
        wsum = Wq.sum(axis=0)
        if not (wsum > 0).all():
            return None
    if adaptive:
        P = _shrunk_mean(Q, Wq, Wv * dbw, np.zeros(Y.shape[1]), mask, shape, groups)[0]
    else:
        P = _smooth((Wq * Q).sum(axis=0) / wsum, mask, shape)
    return P - P.mean()


def _reliable(
    estimator: Callable[[np.ndarray], np.ndarray | None], n: int
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """A pattern estimate and its noise, from even versus odd fields.

    ``estimator(index)`` estimates the pattern from the fields ``index``. Half the difference
    of the two half-sample estimates is a realisation of the full-sample estimate's noise
    (returned, shape (P,)); its variance per pixel is a quarter of their mean squared
    difference (returned as a float).
    """
    idx = np.arange(n)
    full = estimator(idx)
    halves = [estimator(idx[k::2]) for k in (0, 1)]
    if full is None or halves[0] is None or halves[1] is None:
        return None
    half = (halves[0] - halves[1]) / 2.0
    return full, float(np.mean(half * half)), half


def _centred_contrast(
    Y: np.ndarray,
    S: np.ndarray,
    b: np.ndarray,
    W: np.ndarray,
    groups: int = GROUPS,
) -> tuple[float, float] | None:
    """The flat-field's shading contrast from the fields' variation about their mean.

    With ``Y_n(x) = b_n S(x) + D(x) + E_n(x)``, the fields centred on their (weighted)
    per-pixel mean are ``Y_n - Ybar = (b_n - bbar) S(x) + (E_n - Ebar)``: the dark-field, its
    level and its pattern, cancels. A flat-field fitted with a wrong dark level ``D - delta``
    keeps the true shape with a scaled contrast, ``S_fit - 1 = (S - 1) / (1 + delta h)``
    (``h`` the mean inverse baseline), so the model ``Y_n - Ybar = (b_n - bbar)(alpha + beta
    u(x))`` with ``u = S_fit - 1`` is fitted by weighted least squares over fields and pixels;
    ``k = beta / alpha`` is the factor by which the contrast of ``S_fit`` is to be scaled, and
    does not depend on the dark-field. Its sampling variance is the delete-a-group jackknife
    over ``groups`` groups of fields (field ``n`` in group ``n % groups``), so the specimen's
    own smooth background, which is shared by the pixels of a field, is accounted for.

    Parameters
    ----------
    Y : ndarray of shape (N, P)
        Downsampled fields.
    S : ndarray of shape (P,)
        Fitted flat-field, mean 1.
    b : ndarray of shape (N,)
        Baselines of the fields.
    W : ndarray of shape (N, P)
        Weights of the background (0 on the sparse part).
    groups : int
        Groups of fields of the jackknife (at least 3).

    Returns
    -------
    (k, var) or None
        The contrast factor and its jackknife variance; ``None`` when the baselines do not
        vary or there are fewer than 3 groups.
    """
    n = Y.shape[0]
    k_groups = min(groups, n)
    ok = b > 0
    Wk = W * ok[:, None]
    sw = Wk.sum(axis=0)
    if k_groups < 3 or not (sw > 0).any() or not ok.any():
        return None
    if not np.std(b[ok]) > 1e-6 * abs(float(np.mean(b[ok]))):
        return None  # baselines that do not vary carry no contrast
    swc = np.maximum(sw, 1e-12)
    Ybar = (Wk * Y).sum(axis=0) / swc
    bbar = (Wk * b[:, None]).sum(axis=0) / swc
    bc = b[:, None] - bbar
    Yc = Y - Ybar
    u = S - 1.0
    wb = Wk * bc
    # per-group sums of the normal equations of (alpha, beta): a00, a01, a11, r0, r1
    terms = (wb * bc, wb * bc * u, wb * bc * u * u, wb * Yc, wb * Yc * u)
    sums = np.array([[t[g::k_groups].sum() for t in terms] for g in range(k_groups)])

    def solve(a00: float, a01: float, a11: float, r0: float, r1: float) -> float:
        det = a00 * a11 - a01 * a01
        if not det > 0:
            return np.nan
        alpha = (a11 * r0 - a01 * r1) / det
        beta = (a00 * r1 - a01 * r0) / det
        return beta / alpha if alpha > 0 else np.nan

    total = sums.sum(axis=0)
    k = solve(*total)
    jack = np.array([solve(*(total - sums[g])) for g in range(k_groups)])
    if not (np.isfinite(k) and np.isfinite(jack).all()):
        return None
    return float(k), _jackknife_variance(jack)


def _cumulant_level(
    C: np.ndarray, S: np.ndarray, D: np.ndarray, groups: int = GROUPS
) -> tuple[float, float] | None:
    """The dark level's error from the photon noise's skewness, with its jackknife variance.

    Photon (shot) noise is Poisson: with the camera's gain ``g`` (raw units per
    photo-electron) and a signal ``s`` above the dark-field, its second cumulant is ``g s``
    and its third ``g^2 s``, while the Gaussian read noise adds ``r^2`` to the second and
    nothing to the third. The gain is the slope of the second cumulant on the signal within
    each cell of the working grid across fields (``s = b_n S(x)``, the baselines ``b_n`` fitted
    to the cells' background means, so the dark-field and the read noise cancel). Then every
    cell gives the dark-field twice: ``mean - k2 / g = D - r^2 / g`` (precise, but offset by
    the unknown read noise) and ``mean - k3 / g^2 = D`` (unbiased, but noisy); the first
    plus the mean over cells of their difference is the dark-field ``E``. Its disagreement
    with the fitted dark-field ``D``, regressed over cells on ``[1, S]``, has the intercept
    ``delta``: the part of ``D``'s error that no change of the baselines absorbs (a multiple of
    ``S`` is absorbed by the baselines), i.e. the amount by which the level is to be moved.
    Its variance is the delete-a-group jackknife over ``groups`` groups of fields. Cells whose
    background lies fewer than :data:`CLIP_SD` of their field's noise SDs (the median over its
    cells of the second cumulant) above 0 are left out: a camera clips at 0, and the truncated
    lower tail of the noise biases its third cumulant.

    Parameters
    ----------
    C : ndarray of shape (N, 4, P)
        Per field and cell: fraction of pixels used, their mean, the noise's second and
        third cumulants (:func:`hcsflow.illumination.screening._noise_cumulants`).
    S : ndarray of shape (P,)
        Fitted flat-field, mean 1.
    D : ndarray of shape (P,)
        Fitted dark-field.
    groups : int
        Groups of fields of the jackknife.

    Returns
    -------
    (delta, var) or None
        The level's correction (raw units) and its variance; ``None`` when the cumulants are
        missing, the fields too few or the noise's variance does not grow with the signal.
    """
    n = C.shape[0]
    k_groups = min(groups, n)
    if k_groups < 3 or not np.isfinite(C[:, 1]).any():
        return None
    ok = np.isfinite(C).all(axis=1) & (C[:, 0] > 0)
    # each field's noise SD: the median over its cells of the second cumulant (a cell's own is
    # too noisy to select on)
    k2_field = np.array([np.median(C[i, 2, ok[i]]) if ok[i].any() else np.inf for i in range(n)])
    ok &= C[:, 1] > CLIP_SD * np.sqrt(np.maximum(k2_field, 0.0))[:, None]
    if not ok.any():
        return None
    w = np.where(ok, C[:, 0], 0.0)
    y, k2, k3 = (np.where(ok, C[:, j], 0.0) for j in (1, 2, 3))

    # each field's baseline (and signal) is its own: fitted once, taken by every subset
    den_all = (w * S * S).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_all = ((w * (y - D) * S).sum(axis=1) / den_all)[:, None] * S

    def estimate(idx: np.ndarray) -> float:
        wi, yi, k2i, k3i = w[idx], y[idx], k2[idx], k3[idx]
        if not (den_all[idx] > 0).all():
            return np.nan
        x = x_all[idx]
        sw = wi.sum(axis=0)
        swc = np.maximum(sw, 1e-12)
        xc = x - (wi * x).sum(axis=0) / swc
        k2c = k2i - (wi * k2i).sum(axis=0) / swc
        sxx = float((wi * xc * xc).sum())
        gain = float((wi * xc * k2c).sum()) / sxx if sxx > 0 else np.nan
        if not gain > 0:
            return np.nan
        good = sw > 0
        if good.sum() < 3:
            return np.nan
        # the second cumulant's dark-field, less r^2 / g: its shape; the third cumulant's
        # dark-field, free of the read noise: its level
        e2 = (wi * (yi - k2i / gain)).sum(axis=0) / swc
        e3 = (wi * (yi - k3i / gain**2)).sum(axis=0) / swc
        E = e2 + float(np.average((e3 - e2)[good], weights=sw[good]))
        A = np.stack([np.ones(int(good.sum())), S[good]], axis=1) * np.sqrt(sw[good])[:, None]
        coef, *_ = np.linalg.lstsq(A, (E - D)[good] * np.sqrt(sw[good]), rcond=None)
        return float(coef[0])

    index = np.arange(n)
    delta = estimate(index)
    jack = np.array([estimate(index[index % k_groups != g]) for g in range(k_groups)])
    if not (np.isfinite(delta) and np.isfinite(jack).all()):
        return None
    return delta, _jackknife_variance(jack)
