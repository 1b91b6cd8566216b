"""The ``basic`` fit: a low-rank + sparse decomposition of the stack (BaSiC's model), and
the CellProfiler-style ``mean_smooth`` estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hcsflow.illumination.darkfield import (
    _centred_contrast,
    _cumulant_level,
    _dark_level_fit,
    _dark_pattern,
    _jackknife_levels,
    _noise_pattern,
    _reliable,
)
from hcsflow.illumination.surfaces import (
    GROUPS,
    _biweight,
    _coefficient_noise,
    _coeffs,
    _jackknife_variance,
    _lowpass_mask,
    _shrunk_mean,
    _smooth,
    _surface_noise,
)

#: ``dark="auto"``: the fitted dark level is kept when the SD of the flat-field contrast it
#: implies is at most this fraction of the contrast that leaving the dark-field out loses.
DARK_TOLERANCE = 1.0

#: Most passes of step 5 of :func:`_fit_basic` (the move of the dark level).
CENTRE_PASSES = 5

#: The photon noise's skewness determines the dark level when the SD of the contrast factor
#: its level implies is at most this; a less certain estimate neither moves nor confirms the
#: level (step 5 of :func:`_fit_basic`).
SKEW_SD_MAX = 0.25

#: Fields less than this many raw units above the dark level (on average) are dim: there the
#: dark level is kept only when the photon noise's skewness determines it (step 6 of
#: :func:`_fit_basic`).
DIM_SIGNAL = 20.0


def _rank1_sparse(
    Y: np.ndarray,
    D: np.ndarray,
    S: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    iterations: int = 12,
    tune: float = 4.685,
    adaptive: bool = True,
    groups: int = GROUPS,
    pattern_var: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank + sparse fit ``Y_n(x) = b_n S(x) + D(x) + E_n(x)`` with ``D`` held fixed.

    Iteratively reweighted least squares: per-field baselines ``b_n`` (weighted fit of
    ``Y_n - D`` on ``S``), then the flat-field as the weighted mean of ``(Y_n - D) / b_n``
    over fields, projected onto the smooth cosine series and normalised to mean 1. The sparse
    part ``E`` (cells, debris) is handled by Tukey biweights on the relative residuals
    ``(Y_n - D) / b_n - S`` (cut-off ``tune`` times their scaled MAD; 4.685 gives 95 %
    efficiency for Gaussian residuals), so bright objects get weight 0. A wider cut-off (8-10)
    lowered the error on nuclear-stain stacks by about 0.2 points but let the cytoplasm of
    confluent cells into the flat-field of the cytoplasmic channels (12-15 % error instead of
    2.5-5.4 % on the simulated demo plate).

    Parameters
    ----------
    Y : ndarray of shape (N, P)
    D : ndarray of shape (P,)
        Dark-field (raw units).
    S : ndarray of shape (P,)
        Starting flat-field (smooth, mean 1).
    mask : ndarray of shape (h, w), bool
        Cosine coefficients kept.
    shape : tuple of int
        ``(h, w)`` with ``h * w == P``.
    iterations : int
        Most reweighting iterations.
    tune : float
        Cut-off of the biweights in scaled MADs.
    adaptive : bool
        Smooth ``S`` by :func:`_shrunk_mean` (coefficients shrunk by their reliability over
        ``groups`` groups of fields) rather than by keeping every coefficient of ``mask``.
    groups : int
        Groups of fields of the reliability estimate.
    pattern_var : ndarray of shape (h, w), optional
        Noise variance of each cosine coefficient of the dark-field's pattern in ``D`` (raw
        units squared). Its error is subtracted from every field alike, so the groups of
        fields do not see it; divided by the baselines (mean inverse ``h``), it adds
        ``pattern_var h^2`` to the flat-field's coefficient variances in the adaptive
        smoothing (:func:`_shrunk_mean`'s ``extra``).

    Returns
    -------
    S : ndarray of shape (P,)
        Flat-field, mean 1.
    b : ndarray of shape (N,)
        Baseline of each field (raw units above the dark-field).
    W : ndarray of shape (N, P)
        Final weights (0 on the sparse part).
    """
    Z = Y - D
    b = np.median(Z / S, axis=1)
    W = np.ones_like(Y)
    surface = None  # tested on each pass until the lowest rings show a surface (_shrunk_mean)
    for _ in range(iterations):
        bb, W, dW, _ = _biweights(Z, S, b, tune)
        wsum = W.sum(axis=0)
        if adaptive:
            extra = None
            if pattern_var is not None and (b > 0).any():
                extra = pattern_var * float(np.mean(1.0 / b[b > 0])) ** 2
            new, hold = _shrunk_mean(
                Z / bb[:, None], W, dW, S, mask, shape, groups, surface=surface, extra=extra
            )
            surface = True if hold else None
        else:
            Sr = (W * Z / bb[:, None]).sum(axis=0) / np.maximum(wsum, 1e-12)
            Sr = np.where(wsum > 0, Sr, S)
            new = _smooth(Sr, mask, shape)
        m = new.mean()
        if not m > 0:
            raise ValueError("the fields have no signal above the dark level")
        new /= m
        done = float(np.max(np.abs(new - S))) < 1e-5
        S = new
        b = (W * Z * S).sum(axis=1) / np.maximum((W * S * S).sum(axis=1), 1e-12)
        if done:
            break
    return S, b, W


def _flat_noise(
    Y: np.ndarray,
    D: np.ndarray,
    S: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    tune: float = 4.685,
    groups: int = GROUPS,
) -> float:
    """RMS error of the flat-field :func:`_rank1_sparse` fitted with the dark-field ``D``.

    The biweights of its last pass, and :func:`_surface_noise` of the fields divided by their
    baselines (relative units: the flat-field has mean 1).

    Parameters
    ----------
    Y : ndarray of shape (N, P)
    D, S : ndarray of shape (P,)
        The dark-field and the flat-field fitted with it.
    b : ndarray of shape (N,)
        The baselines.
    mask, shape, tune, groups
        As in :func:`_rank1_sparse`.
    """
    Z = Y - D
    bb, W, dW, scale = _biweights(Z, S, b, tune)
    if not scale > 0:
        return 0.0
    return _surface_noise(Z / bb[:, None], W, dW, S, mask, shape, groups)


def _biweights(
    Z: np.ndarray, S: np.ndarray, b: np.ndarray, tune: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Tukey biweights of the fields above the dark-field on the fit ``b_n S``.

    Fields whose baseline is below 5 % of the median get weight 0; the residuals
    ``Z_n / b_n - S`` are cut off at ``tune`` times their scaled MAD (all weights 1 when it
    is 0).

    Parameters
    ----------
    Z : ndarray of shape (N, P)
        The fields minus the dark-field.
    S : ndarray of shape (P,)
        The flat-field.
    b : ndarray of shape (N,)
        The baselines.
    tune : float
        Cut-off in scaled MADs.

    Returns
    -------
    bb : ndarray of shape (N,)
        The baselines, 1 where left out.
    W, dW : ndarray of shape (N, P)
        The weights and the slopes of the influence function (:func:`_biweight`).
    scale : float
        The scaled MAD of the residuals.
    """
    ok = b > 0.05 * max(float(np.median(b)), 1e-12)
    bb = np.where(ok, b, 1.0)
    R = Z / bb[:, None] - S
    scale = 0.0
    if ok.any():
        dev = R[ok]
        np.abs(dev, out=dev)
        scale = 1.4826 * float(np.median(dev, overwrite_input=True))
    if not scale > 0:
        W = ok[:, None] * np.ones_like(Z)
        return bb, W, W, scale
    W, dW = _biweight(R / (tune * scale))
    return bb, W * ok[:, None], dW * ok[:, None], scale


def _fit_basic(
    small: np.ndarray,
    *,
    darkfield: bool,
    max_frequency: float,
    noise: np.ndarray | None = None,
    dark_pattern: bool = True,
    min_baseline_cv: float = 0.02,
    adaptive: bool = True,
    centred: bool = True,
    dark_given: np.ndarray | None = None,
    dark_test: bool = True,
    dark_tolerance: float = DARK_TOLERANCE,
    cumulants: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Flat-field and dark-field as a low-rank + sparse decomposition of the stack.

    Model (BaSiC): ``Y_n(x) = b_n S(x) + D(x) + E_n(x)`` with a per-field baseline ``b_n``,
    a smooth flat-field ``S`` (mean 1), a smooth dark-field ``D >= 0`` and a sparse part ``E``
    (the specimen's bright objects). Steps:

    1. starting surfaces: the per-pixel median across fields, smoothed, ``M = a S + D``;
    2. without a dark-field, ``D = 0`` and (4) follows;
    3. with a dark-field, its constant level ``d0`` from the contrast regression
       (:func:`_dark_level`); then the fit (4) with ``D = d0``; then the dark-field's spatial
       pattern from the variation of the baselines ``b_n`` (:func:`_dark_pattern`). The pattern
       is kept in proportion to its reliability, estimated by refitting it on the fields at
       even and at odd positions: shrinkage ``max(0, 1 - noise / power)`` (James-Stein), so a
       pattern that the data do not determine (baselines that barely vary) drops out and the
       dark-field is the constant ``d0``. With a pattern kept, ``d0`` is re-estimated on the
       stack minus the pattern, ``D`` is clipped at 0 and (4) is repeated;
    4. :func:`_rank1_sparse`: reweighted least squares for ``b_n`` and ``S`` with ``D`` fixed;
    5. with a dark-field and ``centred``: the shading contrast of the fields centred on their
       mean (:func:`_centred_contrast`, free of the dark-field) is combined with the one
       implied by the dark level (contrast factor 1) by inverse-variance weighting, each
       variance from a delete-a-group jackknife over the same 10 groups of fields (the level's
       variance, ``var(d0) h^2`` with ``h`` the mean inverse baseline, from refitting
       :func:`_dark_level` without each group); the level is moved by
       ``(k - 1) / h`` for the combined factor ``k`` and (4) is repeated. Baselines that do
       not vary give the centred contrast no weight (today's estimate is kept). With
       ``cumulants`` (and ``dark_pattern``), a third estimate enters the same way: the level's
       correction ``delta`` from the skewness of the photon noise (:func:`_cumulant_level`),
       as the factor ``1 + delta h`` with variance ``var(delta) h^2``. The level is kept below
       the smoothed median of the fields minus the dark-field's pattern.

    6. with a dark-field and ``dark_test``: is the dark level determined? An error ``delta``
       in the level scales the flat-field's contrast by ``1 / (1 - delta h)``, while leaving
       the dark-field out scales it by ``1 / (1 + d h)`` (``d`` the level): the level is kept
       when the uncertainty of the contrast it implies, ``sigma`` (the SD of the combined
       contrast factor of step 5 from the jackknife variances of its estimates), is at most
       ``dark_tolerance`` times the part of the contrast that leaving it out would lose,
       ``d h / (1 + d h)``, and the flat-field's predicted error with the level (with its
       own noise, :func:`_flat_noise`) is at most that without it; both under every
       hypothesis that one of the estimates is biased (:func:`_alternatives`), each with the
       contrast its own level would lose (:func:`_test_dark_level`). Otherwise the fit falls
       back to a flat-field without dark-field (``D = 0``), and the record says why
       (``dark_determined``, ``dark_reason``, ``dark_level_alternatives``).

    ``cumulants`` (shape (N, 4, h, w)) are the noise cumulants of the fields
    (:func:`hcsflow.illumination.screening._noise_cumulants`).

    A ``dark_given`` (the camera offset or a dark frame on the working grid) is used as
    ``D``: no level, pattern, centring or test.

    With ``adaptive``, the flat-field and the noise-law pattern are smoothed by
    :func:`_shrunk_mean` (each cosine coefficient kept in proportion to its reliability)
    instead of keeping every coefficient up to ``max_frequency``.

    Returns the DCT coefficients (on the working grid) of ``S`` (mean 1) and ``D`` (raw
    units), and a record of the fit (dark-field model ``"none"``, ``"constant"`` or
    ``"surface"``, the baselines' coefficient of variation, the pattern's shrinkage).
    """
    n, h, w = small.shape
    shape = (h, w)
    Y = np.ascontiguousarray(small.reshape(n, h * w), dtype=np.float64)
    mask = _lowpass_mask(shape, max_frequency)
    median = torch.from_numpy(Y).median(dim=0).values.numpy()
    M = _smooth(median, mask, shape)
    info: dict[str, Any] = {}
    if dark_given is not None:
        D = np.asarray(dark_given, dtype=np.float64).reshape(h * w)
        S, b = _flat_only(Y, M, D, mask, shape, adaptive)
        info.update(darkfield_model="given", dark_level=round(float(D.mean()), 4))
    elif not darkfield:
        D = np.zeros(h * w)
        S, b = _flat_only(Y, M, D, mask, shape, adaptive)
        info["darkfield_model"] = "none"
    else:
        noise_v = None if noise is None else noise.reshape(n, h * w).astype(np.float64)
        cum = None
        if cumulants is not None and dark_pattern:
            cum = cumulants.reshape(n, 4, h * w).astype(np.float64)
        D, S, b, info = _fit_with_dark(
            Y,
            M,
            mask,
            shape,
            noise=noise_v,
            cumulants=cum,
            dark_pattern=dark_pattern,
            min_baseline_cv=min_baseline_cv,
            adaptive=adaptive,
            centred=centred,
            dark_test=dark_test,
            dark_tolerance=dark_tolerance,
        )
    info["baseline_median"] = round(float(np.median(b)), 4)
    info["smoothing"] = "adaptive" if adaptive else "fixed"
    sqrt_p = np.sqrt(h * w)
    s_coef = _coeffs(S.reshape(shape), mask)
    s_coef = s_coef / (s_coef[0, 0] / sqrt_p)
    d_coef = _coeffs(D.reshape(shape), mask) if D.any() else np.zeros_like(s_coef)
    return s_coef, d_coef, info


def _flat_only(
    Y: np.ndarray,
    M: np.ndarray,
    D: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    adaptive: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 of :func:`_fit_basic` from the median surface ``M`` with the dark-field ``D``.

    Returns the flat-field ``S`` (mean 1) and the baselines ``b``.
    """
    start = M - D
    if not start.mean() > 0:
        raise ValueError("the fields have no positive signal: cannot estimate a flat-field")
    S, b, _ = _rank1_sparse(Y, D, start / start.mean(), mask, shape, adaptive=adaptive)
    return S, b


def _fit_with_dark(
    Y: np.ndarray,
    M: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    *,
    noise: np.ndarray | None,
    dark_pattern: bool,
    min_baseline_cv: float,
    cumulants: np.ndarray | None = None,
    adaptive: bool,
    centred: bool,
    dark_test: bool,
    dark_tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Steps 3, 5 and 6 of :func:`_fit_basic`: the fit with an estimated dark-field.

    Parameters
    ----------
    Y : ndarray of shape (N, P)
        The downsampled stack.
    M : ndarray of shape (P,)
        Smoothed per-pixel median across fields.
    mask : ndarray of shape (h, w), bool
        Cosine coefficients kept.
    shape : tuple of int
        ``(h, w)`` with ``h * w == P``.
    noise : ndarray of shape (N, P), optional
        Local noise variance of each field (for the noise-law pattern).
    dark_pattern, min_baseline_cv, adaptive, centred, dark_test, dark_tolerance
        As in :func:`_fit_basic`.

    Returns
    -------
    D : ndarray of shape (P,)
        Dark-field (zeros when the test rejected the level).
    S : ndarray of shape (P,)
        Flat-field, mean 1.
    b : ndarray of shape (N,)
        Baselines.
    info : dict
        The record of the fit (without ``baseline_median`` and ``smoothing``).
    """
    n, p = Y.shape
    d0, how = _dark_level_fit(Y, M)
    start = M - d0
    if not start.mean() > 0:
        raise ValueError("the fields have no signal above the dark level")
    D = np.full(p, d0)
    S, b, W = _rank1_sparse(Y, D, start / start.mean(), mask, shape, adaptive=adaptive)
    cv = float(np.std(b) / np.mean(b)) if np.mean(b) > 0 else 0.0
    shrink, source, pattern_sd = 0.0, "none", 0.0
    pattern_var = None
    if dark_pattern and n >= 8:
        D, S, b, W, shrink, source, how, pattern_sd, pattern_var = _add_dark_pattern(
            Y, M, noise, D, S, b, W, how, mask, shape, adaptive, cv >= min_baseline_cv
        )
    anchor = float(D.mean())
    D, S, b, W, contrast, weight, sigma, alternatives, h_mean, skew_sd = _centre_contrast(
        Y, M, D, S, b, W, mask, shape, adaptive, centred, cumulants, pattern_var=pattern_var
    )
    # a move of the level changes the flat-field, and with it the estimates of the move:
    # repeat until they agree with the level (each pass from the regression's level)
    move = contrast
    for _ in range(CENTRE_PASSES - 1):
        if abs(move - 1.0) < 1e-3:
            break
        D, S, b, W, move, _, sigma, alternatives, h_mean, skew_sd = _centre_contrast(
            Y, M, D, S, b, W, mask, shape, adaptive, centred, cumulants, anchor, pattern_var
        )
    info: dict[str, Any] = {}
    info.update(contrast_factor=round(contrast, 4), contrast_weight=round(weight, 4))
    info.update(
        darkfield_model="surface" if shrink > 0 else "constant",
        dark_level=round(float(D.mean()), 4),
        dark_pattern_source=source if shrink > 0 else "none",
        dark_pattern_shrinkage=round(shrink, 4),
        baseline_cv=round(cv, 4),
    )
    fit = DarkFit(
        level=float(D.mean()),
        h_mean=h_mean,
        sigma=sigma,
        how=how,
        contrast_rms=float(np.std(S)),
        pattern_rms=float(np.std(D)),
        pattern_sd=pattern_sd,
        skew_sd=skew_sd,
        alternatives=alternatives,
        flat_sd=_flat_noise(Y, D, S, b, mask, shape) if adaptive else 0.0,
    )
    if dark_test and _test_dark_level(info, fit, dark_tolerance):
        D = np.zeros(p)
        S, b = _flat_only(Y, M, D, mask, shape, adaptive)
    return D, S, b, info


def _add_dark_pattern(
    Y: np.ndarray,
    M: np.ndarray,
    V: np.ndarray | None,
    D: np.ndarray,
    S: np.ndarray,
    b: np.ndarray,
    W: np.ndarray,
    how: str,
    mask: np.ndarray,
    shape: tuple[int, int],
    adaptive: bool,
    baselines_vary: bool,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, str, str, float, np.ndarray | None
]:
    """Step 3 of :func:`_fit_basic`: the dark-field's spatial pattern, shrunk to its reliability.

    The noise law when the fields follow it (``V`` given), else the baselines' variation (when
    ``baselines_vary``); the estimate's noise from even versus odd fields sets a James-Stein
    shrinkage. The baselines' pattern is projected against the current flat-field, which holds
    part of the pattern until the pattern is in the model: that estimate is refitted.

    Returns
    -------
    D, S, b, W
        The fit with the pattern (unchanged when none is kept).
    shrink : float
        Shrinkage of the pattern (0: dropped).
    source : str
        ``"noise"``, ``"baseline"`` or ``"none"``.
    how : str
        How the dark level was found (:func:`_dark_level_fit`).
    pattern_sd : float
        Noise SD per pixel of the pattern kept (raw units; shrinkage times the split-half
        SD of :func:`_reliable`), 0 when none is kept.
    pattern_var : ndarray of shape (h, w) or None
        Noise variance of each cosine coefficient of the pattern kept
        (:func:`_coefficient_noise` of the split-half noise, shrunk alike); ``None`` when none
        is kept. The flat-field refitted with the pattern counts it (:func:`_rank1_sparse`).
    """
    n = Y.shape[0]
    shrink, source, pattern_sd = 0.0, "none", 0.0
    pattern_var = None
    for _ in range(4):
        est = None
        if V is not None and source != "baseline":
            est = _reliable(
                lambda i, W=W: _noise_pattern(Y[i], V[i], W[i], mask, shape, adaptive=adaptive),
                n,
            )
            source = "noise" if est is not None else "none"
        if est is None and baselines_vary:
            est = _reliable(
                lambda i, S=S, b=b, W=W: _dark_pattern(Y[i], S, b[i], W[i], mask, shape),
                n,
            )
            source = "baseline" if est is not None else "none"
        if est is None:
            break
        P, var, half = est
        power = float(np.mean(P * P))
        shrink = max(0.0, 1.0 - var / power) if power > 0 else 0.0
        if shrink <= 0:
            break
        P = shrink * P
        pattern_sd = shrink * math.sqrt(var)
        pattern_var = _coefficient_noise(shrink * half, mask, shape)
        d0, how = _dark_level_fit(Y - P, _smooth(M - P, mask, shape))
        D = np.maximum(d0 + P, 0.0)
        S, b, W = _rank1_sparse(Y, D, S, mask, shape, adaptive=adaptive, pattern_var=pattern_var)
        if source == "noise":
            break
    return D, S, b, W, shrink, source, how, pattern_sd, pattern_var


def _centre_contrast(
    Y: np.ndarray,
    M: np.ndarray,
    D: np.ndarray,
    S: np.ndarray,
    b: np.ndarray,
    W: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    adaptive: bool,
    centred: bool,
    cumulants: np.ndarray | None = None,
    anchor: float | None = None,
    pattern_var: np.ndarray | None = None,
) -> tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    float,
    float,
    float | None,
    tuple[tuple[float, float], ...],
    float,
    float | None,
]:
    """Step 5 of :func:`_fit_basic`: the dark level moved to the combined contrast.

    The dark level from the contrast regression is noisy, and its error scales the
    flat-field's contrast; the fields centred on their mean carry the contrast free of the
    dark-field, and the photon noise's skewness the level (:func:`_cumulant_level`): the
    estimates of the contrast are combined by their variances (delete-a-group jackknife of
    each), the dark level moved to match and step 4 repeated. ``anchor`` is the level of the
    contrast regression when the current one was already moved (a further pass: the
    regression's estimate is then the factor ``1 + (anchor - level) h``). The skewness's
    estimate enters only when the SD of the contrast factor it implies is at most
    :data:`SKEW_SD_MAX` (an estimate within its noise of any level neither moves nor confirms
    it). ``pattern_var``: the noise of the dark-field's pattern per cosine coefficient, which
    the refitted flat-field counts (:func:`_rank1_sparse`).

    Returns
    -------
    D, S, b, W
        The fit after the move.
    contrast : float
        The combined contrast factor (1: none).
    weight : float
        Weight of the centred fields' contrast.
    sigma : float or None
        SD of the contrast factor the dark level implies, from the estimates' own variances
        (``None`` with too few fields).
    alternatives : tuple of (float, float)
        ``(level, variance of the contrast factor)`` where the level lies if one of the
        estimates is biased (:func:`_alternatives`); raw units.
    h_mean : float
        Mean inverse baseline.
    skew_sd : float or None
        SD of the contrast factor implied by the skewness's level; ``None`` when it was not
        measured (without ``cumulants`` or ``centred``, or every cell near 0).
    """
    n = Y.shape[0]
    contrast, weight = 1.0, 0.0
    sigma: float | None = None
    alternatives: tuple[tuple[float, float], ...] = ()
    skew_sd: float | None = None
    h_mean = 0.0
    if n >= 8:
        ok = b > 0
        Wk = W * ok[:, None]
        inv_b = np.where(ok, 1.0 / np.where(ok, b, 1.0), 0.0)
        h_mean = float(
            ((Wk * inv_b[:, None]).sum(axis=0) / np.maximum(Wk.sum(axis=0), 1e-12)).mean()
        )
    if not h_mean > 0:
        return D, S, b, W, contrast, weight, sigma, alternatives, h_mean, skew_sd
    pattern = D - float(D.mean())
    m_pattern = _smooth(M - pattern, mask, shape)
    kg = min(GROUPS, n)
    groups = np.arange(n) % kg
    y_flat = Y - pattern
    levels = _jackknife_levels(y_flat, m_pattern, groups)
    # a level error delta scales the contrast by 1 + delta * h_mean
    var0 = _jackknife_variance(levels) * h_mean**2
    sigma = math.sqrt(var0)
    est_c = _centred_contrast(Y, S, b, W) if centred else None
    est_k = None
    if centred and cumulants is not None:
        est_k = _cumulant_level(cumulants, S, D)
        if est_k is not None:
            skew_sd = math.sqrt(est_k[1]) * h_mean
            if skew_sd > SKEW_SD_MAX:
                est_k = None
    if anchor is not None:
        contrast = 1.0 + (anchor - float(D.mean())) * h_mean
    estimates = [(contrast, var0)]
    if est_c is not None:
        estimates.append(est_c)
        weight = _combine(contrast, var0, *est_c)[1]
    if est_k is not None:
        # the photon noise's skewness: a move of the level by delta scales the contrast by
        # 1 + delta h
        estimates.append((1.0 + est_k[0] * h_mean, est_k[1] * h_mean**2))
    contrast, _, pure = _combine_all(estimates)
    sigma = math.sqrt(pure)
    level = float(D.mean())
    # where the level lies if one of the estimates is biased (raw units)
    alternatives = tuple(
        (level + (value - 1.0) / h_mean, var)
        for value, var in _alternatives(estimates, contrast, pure)
    )
    if est_c is not None or est_k is not None:
        delta = (contrast - 1.0) / h_mean
        # the dark-field stays below the (smoothed) median of the fields everywhere: a bound
        # free of the noise that puts the darkest single value below the dark level
        upper = float(np.min(M - pattern))
        delta = float(np.clip(delta, -level, max(upper, float(Y.min())) - level))
        if delta != 0.0:
            D = np.maximum(D + delta, 0.0)
            S, b, W = _rank1_sparse(
                Y,
                D,
                1.0 + contrast * (S - 1.0),
                mask,
                shape,
                adaptive=adaptive,
                pattern_var=pattern_var,
            )
    return D, S, b, W, contrast, weight, sigma, alternatives, h_mean, skew_sd


@dataclass(frozen=True)
class DarkFit:
    """What step 6 of :func:`_fit_basic` weighs: the fitted dark-field and what it implies.

    Attributes
    ----------
    level : float
        Mean of the dark-field (raw units).
    h_mean : float
        Mean inverse baseline (1 / raw units).
    sigma : float or None
        SD of the flat-field's contrast factor that the level implies, from the estimates'
        own variances (``None``: too few fields to measure it).
    how : str
        How the level was found (:func:`_dark_level_fit`).
    contrast_rms : float
        RMS of the fitted flat-field about its mean 1.
    pattern_rms : float
        RMS of the dark-field about its mean (raw units).
    pattern_sd : float
        Noise SD per pixel of the dark-field's pattern (raw units; 0 without a pattern).
    skew_sd : float or None
        SD of the contrast factor implied by the photon noise's skewness (``None``: not
        measured).
    alternatives : tuple of (float, float)
        ``(level, variance of the contrast factor)`` where the true level lies if one of its
        estimates is biased (:func:`_alternatives`).
    flat_sd : float
        RMS error of the flat-field fitted with the dark-field (:func:`_flat_noise`; its
        noise and its smoothing's shrinkage), relative to its mean 1.
    """

    level: float
    h_mean: float
    sigma: float | None
    how: str
    contrast_rms: float
    pattern_rms: float
    pattern_sd: float
    skew_sd: float | None = None
    alternatives: tuple[tuple[float, float], ...] = ()
    flat_sd: float = 0.0

    @property
    def level_signal(self) -> float:
        """The fields' signal above the dark level, ``1 / h`` (raw units; inf when ``h`` is 0)."""
        return 1.0 / self.h_mean if self.h_mean > 0 else math.inf

    def hypotheses(self) -> list[tuple[float, float]]:
        """Where the true level may lie: ``(level, SD of the contrast factor)`` per hypothesis.

        First the fitted level with ``sigma``; then each alternative, whose SD adds the
        contrast factor of its distance from the fitted level (``(level_i - level) h``) to its
        own variance. Empty when ``sigma`` is ``None``.
        """
        if self.sigma is None:
            return []
        out = [(self.level, self.sigma)]
        for level, var in self.alternatives:
            shift = (level - self.level) * self.h_mean
            out.append((max(level, 0.0), math.sqrt(shift * shift + var)))
        return out

    def lost(self, level: float | None = None) -> float:
        """The part ``d h / (1 + d h)`` of the contrast that leaving a level ``d`` out loses."""
        dh = (self.level if level is None else level) * self.h_mean
        return dh / (1.0 + dh) if dh > 0 else 0.0

    def errors(self, level: float | None = None, sd: float | None = None) -> tuple[float, float]:
        """Predicted RMS error of the flat-field with the dark-field kept and left out.

        An error ``delta`` in the level scales the flat-field's contrast ``C`` by
        ``1 + delta h``, and the pattern's noise adds ``pattern_sd * h`` (the fields divided by
        baselines of mean inverse ``h``); leaving the dark-field out loses the part
        ``d h / (1 + d h)`` of the contrast and adds the whole pattern divided by the baselines
        plus the level, ``pattern_rms * h / (1 + d h)``. The flat-field's own error
        ``flat_sd`` adds to keeping, and divided by ``1 + d h`` to leaving out (the fields
        lie ``1 + d h`` times as far above 0 as above the level). ``C`` is the fitted contrast
        less the parts the pattern's noise and the flat-field's error account for (in
        quadrature).

        Parameters
        ----------
        level, sd : float, optional
            A hypothesis of :meth:`hypotheses`: the true level ``d`` and the SD of the contrast
            factor that keeping the fitted level leaves; default the fitted level and
            ``sigma``.

        Returns
        -------
        keep, drop : float
            Relative RMS errors (``keep`` is infinite when the SD is ``None``).
        """
        level = self.level if level is None else level
        sd = self.sigma if sd is None else sd
        dh = level * self.h_mean
        noise = self.pattern_sd * self.h_mean
        contrast = math.sqrt(max(self.contrast_rms**2 - noise**2 - self.flat_sd**2, 0.0))
        keep = math.inf if sd is None else math.hypot(sd * contrast, noise, self.flat_sd)
        drop = math.hypot(
            self.lost(level) * contrast,
            self.pattern_rms * self.h_mean / (1.0 + max(dh, 0.0)),
            self.flat_sd / (1.0 + max(dh, 0.0)),
        )
        return keep, drop


def _combine(a: float, var_a: float, b: float, var_b: float) -> tuple[float, float, float]:
    """Two estimates combined by their variances: the estimate, the weight of ``b`` and the
    variance, plus the estimates' disagreement beyond their variances (a bias of one of them)."""
    weight = var_a / (var_a + var_b) if var_a + var_b > 0 else 0.0
    excess = max(0.0, (b - a) ** 2 - var_a - var_b)
    return a + weight * (b - a), weight, weight * var_b + excess


def _combine_all(estimates: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Estimates ``(value, variance)`` combined in turn by :func:`_combine`.

    Returns
    -------
    value : float
        The combined estimate.
    var : float
        Its variance plus the estimates' disagreement beyond their variances.
    pure : float
        Its variance from the estimates' own variances alone (the same weights).
    """
    value, var = estimates[0]
    pure = var
    for b, var_b in estimates[1:]:
        value, weight, var = _combine(value, var, b, var_b)
        pure = (1.0 - weight) ** 2 * pure + weight**2 * var_b
    return value, var, pure


def _alternatives(
    estimates: list[tuple[float, float]], value: float, pure: float
) -> list[tuple[float, float]]:
    """Where the truth lies if one of the estimates is biased: ``(value, variance)`` each.

    For every estimate that disagrees with the combination of the others beyond both their
    variances, that combination, drawn towards the combination of all (``value``, variance
    ``pure``) by how little of the disagreement exceeds the noise, ``rho = sqrt(excess /
    gap^2)`` (no excess: the combination of all), with a variance between the two in the same
    proportion.
    """
    out = []
    if len(estimates) < 2:
        return out
    for j, (x, var_x) in enumerate(estimates):
        rest, _, rest_pure = _combine_all(estimates[:j] + estimates[j + 1 :])
        gap2 = (x - rest) ** 2
        excess = gap2 - var_x - rest_pure
        if excess > 0:
            rho = math.sqrt(excess / gap2)
            out.append((value + rho * (rest - value), (1.0 - rho) * pure + rho * rest_pure))
    return out


def _test_dark_level(info: dict[str, Any], fit: DarkFit, dark_tolerance: float) -> bool:
    """Step 6 of :func:`_fit_basic`: is the dark level determined? Records the answer in ``info``.

    The level is kept when the SD of the contrast factor it implies is at most
    ``dark_tolerance`` times the part ``d h / (1 + d h)`` of the contrast that leaving it out
    loses (the contrast test), and the flat-field's predicted error with it is at most
    ``dark_tolerance`` times the error without it (:meth:`DarkFit.errors`): the pattern's
    noise counts against keeping a level that leaves little signal above it (a dark-field
    pattern uncertain by half a count under a background of 10 counts shades the flat-field
    by 5 %), the pattern itself against leaving it out. Both tests hold under every hypothesis
    of :meth:`DarkFit.hypotheses`: where one estimate of the level disagrees with the others
    beyond their variances, the true level may lie where the others put it, and leaving the
    dark-field out loses the contrast of the true level, not of the fitted one (a higher
    level makes leaving it out costlier, a lower one cheaper). On dim fields, less than
    :data:`DIM_SIGNAL` raw units above the level (``1 / h``), the contrast, the centred fields
    and the pattern are all weak, and the predicted errors rest on a flat-field fitted with the
    doubtful level: there, when the skewness was measured, the level is kept only if the skewness
    determines it (``skew_sd`` at most :data:`SKEW_SD_MAX`) and no hypothesis of a biased
    estimate leaves the contrast factor more uncertain than that. Where the skewness was not
    measured (every cell within a few noise SDs of 0, where the camera clips) the test is as
    without it.

    Returns
    -------
    bool
        True when the level is rejected (``info`` then says why and records no dark-field).
    """
    lost = fit.lost()
    hypotheses = fit.hypotheses()
    errors = [fit.errors(level, sd) for level, sd in hypotheses] or [fit.errors()]
    # the binding hypothesis of each test: the largest ratio of keeping to leaving out
    i_c = max(
        range(len(hypotheses)),
        key=lambda i: _ratio(hypotheses[i][1], fit.lost(hypotheses[i][0])),
        default=0,
    )
    i_e = max(range(len(errors)), key=lambda i: _ratio(*errors[i]))
    keep, drop = errors[i_e]
    spread = max((sd for _, sd in hypotheses[1:]), default=0.0)
    # on dim fields with the skewness measured, the level must be determined
    dim = fit.skew_sd is not None and fit.level_signal < DIM_SIGNAL

    def where(i: int) -> str:
        if i == 0:
            return ""
        return (
            f" if the level is {hypotheses[i][0]:.4g} (where its estimates' disagreement puts it)"
        )

    reason = ""
    if fit.sigma is None:
        reason = "too few fields to measure the level's uncertainty"
    elif not lost > 0:
        reason = "the fitted dark level is 0"
    elif hypotheses[i_c][1] > dark_tolerance * fit.lost(hypotheses[i_c][0]):
        level_c, sd_c = hypotheses[i_c]
        reason = (
            f"the level leaves the flat-field's contrast uncertain by {sd_c:.3g} "
            f"(factor SD){where(i_c)}, more than {dark_tolerance:g} x the "
            f"{fit.lost(level_c):.3g} that leaving it out loses"
        )
    elif dim and not fit.skew_sd <= SKEW_SD_MAX:
        reason = (
            f"the fields lie {fit.level_signal:.3g} units above the level, and the photon "
            f"noise's skewness does not determine it (contrast factor SD {fit.skew_sd:.3g}, "
            f"more than {SKEW_SD_MAX:g})"
        )
    elif dim and spread > SKEW_SD_MAX:
        reason = (
            f"the fields lie {fit.level_signal:.3g} units above the level, and its estimates "
            f"disagree (contrast factor SD {spread:.3g} if one of them is biased, more than "
            f"{SKEW_SD_MAX:g})"
        )
    elif keep > dark_tolerance * drop:
        level_e, sd_e = hypotheses[i_e]
        reason = (
            f"with the level the flat-field is uncertain by {keep:.3g} (RMS; contrast factor SD "
            f"{sd_e:.3g}, pattern noise {fit.pattern_sd:.3g} units){where(i_e)}, more than "
            f"{dark_tolerance:g} x the {drop:.3g} of leaving it out (the "
            f"{fit.lost(level_e):.3g} of the contrast it would lose, and the pattern)"
        )
    info.update(
        dark_level_from=fit.how,
        dark_determined=not reason,
        dark_contrast_sd=None if fit.sigma is None else round(fit.sigma, 4),
        dark_contrast_lost=round(lost, 4),
        dark_error_kept=None if fit.sigma is None else round(errors[0][0], 5),
        dark_error_left_out=round(errors[0][1], 5),
    )
    if len(hypotheses) > 1:
        info["dark_level_alternatives"] = [
            [round(level, 2), round(sd, 4)] for level, sd in hypotheses[1:]
        ]
    if reason:
        info.update(
            dark_reason=reason,
            dark_level_rejected=info["dark_level"],
            darkfield_model="none",
            dark_level=0.0,
            dark_pattern_source="none",
            dark_pattern_shrinkage=0.0,
        )
    return bool(reason)


def _ratio(keep: float, drop: float) -> float:
    """``keep / drop``, infinite when ``drop`` is 0 and ``keep`` is not."""
    if drop > 0:
        return keep / drop
    return math.inf if keep > 0 else 0.0


def _fit_mean_smooth(
    small: np.ndarray, *, max_frequency: float, trim: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed per-pixel mean of median-scaled fields, projected onto a smooth surface."""
    n, h, w = small.shape
    X = torch.from_numpy(small.reshape(n, -1))
    med = X.median(dim=1).values.clamp_min(1e-6)
    X = X / med[:, None]
    k = int(np.floor(trim * n))
    if k > 0 and n - 2 * k >= 1:
        X = X.sort(dim=0).values[k : n - k]
    mean = X.mean(dim=0).double().numpy().reshape(h, w)
    coef = _coeffs(mean, _lowpass_mask((h, w), max_frequency))
    m = coef[0, 0] / np.sqrt(h * w)  # mean of the surface
    if not m > 0:
        raise ValueError("the fields have no positive signal: cannot estimate a flat-field")
    return coef / m, np.zeros_like(coef)
