"""Flat-field and dark-field estimation and correction.

A fluorescence image is modelled as ``raw = signal * flatfield + darkfield``: the flat-field is
the multiplicative shading of the optics (vignetting, uneven illumination; mean 1), the
dark-field the additive camera offset and stray light (raw intensity units). Both are smooth
surfaces estimated per plate (or batch) and channel from many fields, and every image is then
corrected in memory as ``(raw - darkfield) / flatfield``.

Methods
-------
``basic``
    Our implementation of the BaSiC image-formation model (Peng et al. 2017, Nat Commun
    8:14836), ``Y_n(x) = b_n S(x) + D(x) + E_n(x)``: on the stack downsampled to a working grid,
    a low-rank part (per-field baseline ``b_n`` times the flat-field ``S``, plus the dark-field
    ``D``) and a sparse part ``E`` (the specimen's bright objects), solved by alternating
    robust fits (iteratively reweighted least squares with Tukey biweights) with ``S`` and ``D``
    smooth (cosine series up to ``max_frequency`` cycles per field; with the default
    ``smoothing="adaptive"`` each coefficient is shrunk by how well the fields determine it, so
    the smoothness follows the data), ``mean(S) = 1`` and ``D >= 0``. The dark level comes from
    the fields' own variation (a field's shading contrast grows with its brightness above it);
    the dark-field's spatial pattern from the camera's noise law (shot noise grows with the
    light, the offset adds none) or, without noise statistics, from the variation of the
    baselines ``b_n`` (BaSiC's identification). The pattern is kept in proportion to its split-half reliability; when nothing determines it
    (baselines that do not vary, no noise statistics) the dark-field is a constant, and the
    case is recorded (:attr:`IlluminationResult.details`). The fields centred on their mean,
    ``(b_n - mean b) S(x)``, carry the shading free of the dark-field: the contrast they give
    and the contrast implied by the dark level are combined by their variances, and the dark
    level is moved to match.
``mean_smooth``
    CellProfiler-style (CorrectIlluminationCalculate): a robust per-pixel mean of the fields
    (each field scaled by its median; the brightest and darkest 25% of the fields at each pixel
    trimmed), smoothed by the same low-frequency projection. No dark-field (zeros).
``none``
    Flat-field of ones and dark-field of zeros.

Field screening
---------------
Before estimation, fields that would bias the estimate are left out (:func:`screen_fields`):

* **blank**: the field's mean rises above its own floor (minimum of the field binned to
  the working grid) by less than ``blank_fraction`` (default 5%) of the median of that
  quantity over the stack -- a frame with no specimen or illumination signal (shutter closed,
  failed acquisition, empty camera frame);
* **saturated**: more than ``saturated_fraction`` (default 0.5%) of its pixels are at the
  saturation level (the integer type's maximum, or ``saturation_value``), or at the stack's
  maximum value when that value is clipped in as many pixels (12-bit cameras in 16-bit files);
* **out of focus**: its focus score -- the variance of the Laplacian of the 2x-binned field
  divided by that of the field binned a further 4x -- is below ``focus_fraction`` (default 0.2)
  of the stack's median. The ratio compares fine with coarse detail, so it does not depend on
  brightness or cell density, and a blurred field (fine detail gone, coarse detail kept) scores low.

If fewer than ``min_fields`` fields remain, a :class:`IlluminationWarning` is issued and the
``fallback`` method is used instead (``mean_smooth`` on the usable fields, or ``none``).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import fft as sfft

from hcsflow.io import BadImageError, ImagesRoot, atomic_path, field_paths

METHODS = ("basic", "mean_smooth", "none")
FALLBACKS = ("mean_smooth", "none")
SMOOTHINGS = ("adaptive", "fixed")
#: Groups of fields (field ``n`` in group ``n % GROUPS``) of the reliability and jackknife
#: estimates of the ``basic`` fit.
GROUPS = 10
#: ``dark="auto"``: the fitted dark level is kept when the SD of the flat-field contrast it
#: implies is at most this fraction of the contrast that leaving the dark-field out loses.
DARK_TOLERANCE = 1.0


class IlluminationWarning(UserWarning):
    """Issued when an estimate falls back to a simpler method (too few usable fields)."""


@dataclass(frozen=True)
class ScreeningParams:
    """Thresholds of the field screening (see the module documentation).

    Attributes
    ----------
    blank_fraction : float
        A field is blank when its mean above its own floor is below this fraction of the
        stack's median of that quantity.
    saturated_fraction : float
        A field is saturated when more than this fraction of its pixels is saturated.
    focus_fraction : float
        A field is out of focus when its focus score is below this fraction of the stack's median.
    saturation_value : float or None
        Saturation level in raw units; ``None`` takes the maximum of the integer type.
    """

    blank_fraction: float = 0.05
    saturated_fraction: float = 0.005
    focus_fraction: float = 0.2
    saturation_value: float | None = None


@dataclass
class FieldStats:
    """Per-field statistics gathered while downsampling, used for screening.

    Attributes
    ----------
    mean : ndarray of shape (N,)
    floor : ndarray of shape (N,)
        Minimum of each field on the working grid.
    saturated : ndarray of shape (N,)
        Fraction of saturated pixels of each field.
    clipped_at_max : ndarray of shape (N,)
        Fraction of pixels of each field equal to that field's maximum.
    maximum : ndarray of shape (N,)
        Maximum of each field.
    focus : ndarray of shape (N,)
        Focus score of each field (NaN for a constant field).
    noise : ndarray of shape (N, h, w), optional
        Local pixel noise variance of each field on the working grid: the mean over the cell
        of the squared diagonal difference ``(a - b - c + d) / 2`` of every (overlapping)
        2 x 2 block of full-size pixels, which cancels smooth signal and equals the noise
        variance for white noise.
    """

    mean: np.ndarray
    floor: np.ndarray
    saturated: np.ndarray
    clipped_at_max: np.ndarray
    maximum: np.ndarray
    focus: np.ndarray
    noise: np.ndarray | None = None


@dataclass
class IlluminationResult:
    """Result of :func:`fit`.

    Attributes
    ----------
    flatfield : ndarray of shape (H, W), float32
        Multiplicative shading, mean 1.
    darkfield : ndarray of shape (H, W), float32
        Additive offset in raw intensity units.
    method : str
        The method actually used (differs from the requested one after a fallback).
    n_fields : int
        Number of fields given.
    used : ndarray of shape (N,), bool
        Which fields entered the estimate.
    excluded : dict of int to str
        Index of each left-out field -> reason (``blank``, ``saturated``, ``out_of_focus``).
    details : dict
        Record of the ``basic`` fit: ``darkfield_model`` (``"none"``, ``"constant"``: the
        baselines did not determine a spatial pattern, or ``"surface"``), ``dark_level`` (mean
        of the dark-field), ``baseline_cv`` (coefficient of variation of the fields'
        baselines), ``dark_pattern_shrinkage`` (0: pattern dropped, 1: kept in full),
        ``baseline_median``, ``smoothing`` (``"adaptive"`` or ``"fixed"``) and, with
        dark-field, ``contrast_factor`` (the factor by which the centred fields scaled the
        flat-field's contrast, 1: none) and ``contrast_weight`` (the weight of the centred
        fields' contrast) and ``flatfield_uniform`` (True when the fields showed no shading
        beyond their noise and the flat-field is a constant); empty for the other methods.
    dropped : list of dict
        Sampled fields left out because their file could not be read or had another shape
        (:func:`estimate_from_manifest` with ``on_bad_image="drop"``): ``File``,
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Channel``, ``Reason``.
    """

    flatfield: np.ndarray
    darkfield: np.ndarray
    method: str
    n_fields: int
    used: np.ndarray
    excluded: dict[int, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """A JSON-serialisable summary (method, counts, reasons of exclusion, dropped files)."""
        reasons: dict[str, int] = {}
        for r in self.excluded.values():
            reasons[r] = reasons.get(r, 0) + 1
        out = {
            "method": self.method,
            "n_fields": int(self.n_fields),
            "n_used": int(self.used.sum()),
            "excluded": dict(sorted(reasons.items())),
            "fit": dict(sorted(self.details.items())),
        }
        if self.dropped:
            out["dropped"] = list(self.dropped)
        return out


# --------------------------------------------------------------------------------------------
# downsampling and screening


def _working_shape(shape: tuple[int, int], working_size: int) -> tuple[int, int]:
    h, w = shape
    scale = min(1.0, working_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _laplacian_var(x: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of each image of a (n, 1, h, w) tensor."""
    lap = (
        x[:, :, 1:-1, :-2]
        + x[:, :, 1:-1, 2:]
        + x[:, :, :-2, 1:-1]
        + x[:, :, 2:, 1:-1]
        - 4 * x[:, :, 1:-1, 1:-1]
    )
    return lap.flatten(1).var(dim=1)


def _reduce_chunk(
    chunk: np.ndarray, working: tuple[int, int], sat_level: float
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Downsample a chunk (k, H, W) to the working grid and gather screening statistics."""
    t = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).unsqueeze(1)
    k = t.shape[0]
    flat = t.view(k, -1)
    maximum = flat.amax(dim=1)
    sat = (flat >= sat_level).float().mean(dim=1)
    at_max = (flat >= maximum[:, None]).float().mean(dim=1)
    h, w = t.shape[-2:]
    fine = F.avg_pool2d(t, 2) if min(h, w) >= 64 else t
    coarse = F.avg_pool2d(fine, 4) if min(fine.shape[-2:]) >= 16 else fine
    lap_fine = _laplacian_var(fine)
    lap_coarse = _laplacian_var(coarse)
    focus = torch.where(lap_coarse > 0, lap_fine / lap_coarse.clamp_min(1e-30), torch.nan)
    small = F.adaptive_avg_pool2d(t, working)[:, 0]
    if h >= 2 * working[0] and w >= 2 * working[1]:
        q = t[:, :, :-1, :-1] - t[:, :, :-1, 1:] - t[:, :, 1:, :-1] + t[:, :, 1:, 1:]
        noise = F.adaptive_avg_pool2d((0.5 * q) ** 2, working)[:, 0]
    else:
        noise = torch.full_like(small, torch.nan)
    stats = {
        "mean": flat.mean(dim=1, dtype=torch.float64).numpy(),
        "floor": small.flatten(1).amin(dim=1).double().numpy(),
        "saturated": sat.double().numpy(),
        "clipped_at_max": at_max.double().numpy(),
        "maximum": maximum.double().numpy(),
        "focus": focus.double().numpy(),
        "noise": noise.numpy(),
    }
    return small, stats


def downsample(
    fields: Iterable[np.ndarray],
    *,
    working_size: int = 128,
    saturation_value: float | None = None,
    names: Sequence[str] | None = None,
    chunk: int = 16,
) -> tuple[np.ndarray, FieldStats, tuple[int, int]]:
    """Downsample fields to the working grid (area averaging) and gather screening statistics.

    Fields are consumed one chunk at a time, so a generator that reads files keeps memory
    bounded by ``chunk`` full-size images.

    Parameters
    ----------
    fields : iterable of ndarray of shape (H, W)
        The fields (any real dtype); all must have the same shape.
    working_size : int
        Longest side of the working grid; smaller images are kept at full size.
    saturation_value : float, optional
        Saturation level in raw units; default the integer dtype's maximum (none for floats).
    names : sequence of str, optional
        A name per field (file path) used in error messages.
    chunk : int
        Number of full-size fields processed at once.

    Returns
    -------
    small : ndarray of shape (N, h, w), float32
        The downsampled stack.
    stats : FieldStats
        Screening statistics per field.
    shape : tuple of int
        The full-size shape ``(H, W)``.
    """
    shape: tuple[int, int] | None = None
    working: tuple[int, int] = (0, 0)
    sat_level = np.inf if saturation_value is None else float(saturation_value)
    smalls: list[torch.Tensor] = []
    parts: list[dict[str, np.ndarray]] = []
    buf: list[np.ndarray] = []

    def name(i: int) -> str:
        return str(names[i]) if names is not None and i < len(names) else f"field {i}"

    def flush() -> None:
        if buf:
            small, stats = _reduce_chunk(np.stack(buf), working, sat_level)
            smalls.append(small)
            parts.append(stats)
            buf.clear()

    for i, img in enumerate(fields):
        img = np.asarray(img)
        if img.ndim != 2:
            raise ValueError(f"{name(i)} has shape {img.shape}; expected a 2-D field (H, W)")
        if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
            raise ValueError(f"{name(i)} has dtype {img.dtype}; expected real numbers")
        if shape is None:
            shape = (int(img.shape[0]), int(img.shape[1]))
            working = _working_shape(shape, working_size)
            if saturation_value is None and np.issubdtype(img.dtype, np.integer):
                sat_level = float(np.iinfo(img.dtype).max)
        elif img.shape != shape:
            raise ValueError(
                f"{name(i)} has shape {img.shape}, but the other fields of the stack have {shape}"
            )
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise ValueError(f"{name(i)} contains NaN or infinite values")
        buf.append(img)
        if len(buf) >= chunk:
            flush()
    flush()
    if shape is None:
        raise ValueError("no fields given: the stack is empty")
    small = torch.cat(smalls).numpy()
    stats = FieldStats(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return small, stats, shape


def screen_fields(stats: FieldStats, params: ScreeningParams = ScreeningParams()) -> dict[int, str]:
    """Decide which fields to leave out of the estimate.

    Parameters
    ----------
    stats : FieldStats
        Statistics from :func:`downsample`.
    params : ScreeningParams
        Thresholds.

    Returns
    -------
    dict of int to str
        Index of each excluded field -> ``"blank"``, ``"saturated"`` or ``"out_of_focus"``
        (the first criterion that applies, in that order).
    """
    n = len(stats.mean)
    signal = stats.mean - stats.floor
    ref = float(np.median(signal)) if n else 0.0
    blank = ~(signal > params.blank_fraction * ref) | (ref <= 0)
    global_max = float(stats.maximum.max()) if n else 0.0
    clipped = np.where(stats.maximum >= global_max, stats.clipped_at_max, 0.0)
    saturated = np.maximum(stats.saturated, clipped) > params.saturated_fraction
    keep = ~blank & ~saturated
    focus = stats.focus
    finite = keep & np.isfinite(focus)
    fref = float(np.median(focus[finite])) if finite.any() else np.nan
    out_of_focus = np.isfinite(fref) & ~(focus >= params.focus_fraction * fref)
    excluded: dict[int, str] = {}
    for i in range(n):
        if blank[i]:
            excluded[i] = "blank"
        elif saturated[i]:
            excluded[i] = "saturated"
        elif out_of_focus[i]:
            excluded[i] = "out_of_focus"
    return excluded


# --------------------------------------------------------------------------------------------
# smooth surfaces: low-frequency cosine series


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


# --------------------------------------------------------------------------------------------
# estimators on the working grid


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
    w = np.where(inside, (1.0 - u2) ** 2, 0.0)
    dw = np.where(inside, (1.0 - u2) * (1.0 - 5.0 * u2), 0.0)
    return w, dw


def _shrunk_mean(
    values: np.ndarray,
    weights: np.ndarray,
    slopes: np.ndarray,
    fallback: np.ndarray,
    mask: np.ndarray,
    shape: tuple[int, int],
    groups: int = GROUPS,
) -> np.ndarray:
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

    Before the shrinkage, the surface as a whole is tested against a constant: under a
    constant surface ``T = sum_k c_k^2 / v_k`` over the ``m`` coefficients besides the mean is
    about chi-squared with ``m`` degrees of freedom, so ``T < m + 3 sqrt(2 m)`` means the fields
    show no surface beyond their noise, and the constant ``c_0`` is returned (a uniform
    illumination is then left exactly uniform, not shaded by the noise that survives the
    coefficient-wise shrinkage).

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

    Returns
    -------
    ndarray of shape (P,)
    """
    n = values.shape[0]
    wsum = weights.sum(axis=0)
    raw = np.where(wsum > 0, (weights * values).sum(axis=0) / np.maximum(wsum, 1e-12), fallback)
    coef = _coeffs(raw.reshape(shape), mask)
    k = min(groups, n)
    if k < 3:
        return _surface(coef).ravel()
    # the sandwich's denominator, kept from vanishing where most values are outliers
    den = np.maximum(slopes.sum(axis=0), 0.1 * wsum)
    contrib = weights * (values - raw)
    infl = np.stack([contrib[j::k].sum(axis=0) for j in range(k)])
    infl = np.where(den > 0, infl / np.maximum(den, 1e-12), 0.0)
    ic = sfft.dctn(infl.reshape(k, *shape), axes=(1, 2), norm="ortho") * mask
    var = k / (k - 1) * ((ic - ic.mean(axis=0)) ** 2).sum(axis=0)
    ring = _ring_index(shape)
    sel = mask.copy()
    sel[0, 0] = False
    pooled = np.bincount(ring[sel], var[sel], minlength=ring.max() + 1)
    count = np.bincount(ring[sel], minlength=ring.max() + 1)
    vr = np.where(count > 0, pooled / np.maximum(count, 1), 0.0)[ring]
    c2 = coef * coef
    m = int(sel.sum())
    t = float((c2[sel] / np.maximum(vr[sel], 1e-300)).sum())
    if t < m + 3.0 * math.sqrt(2.0 * m):
        factor = np.zeros_like(coef)
    else:
        factor = np.where(c2 > 0, np.clip(1.0 - vr / np.where(c2 > 0, c2, 1.0), 0.0, 1.0), 0.0)
    factor[0, 0] = 1.0
    return _surface(coef * factor).ravel()


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


def _dark_level(Y: np.ndarray, M: np.ndarray) -> float:
    """Constant dark level from the fields' own variation; :func:`_dark_level_fit`'s level."""
    return _dark_level_fit(Y, M)[0]


def _dark_level_fit(Y: np.ndarray, M: np.ndarray) -> tuple[float, str]:
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
    med = np.median(Y, axis=0)
    mad = 1.4826 * np.median(np.abs(Y - med), axis=0)
    Y = np.minimum(Y, med + 2.0 * mad)
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
    for _ in range(iterations):
        ok = b > 0.05 * max(float(np.median(b)), 1e-12)
        bb = np.where(ok, b, 1.0)
        R = Z / bb[:, None] - S
        scale = 1.4826 * float(np.median(np.abs(R[ok]))) if ok.any() else 0.0
        if not scale > 0:
            W = ok[:, None] * np.ones_like(Y)
            dW = W
        else:
            W, dW = _biweight(R / (tune * scale))
            W, dW = W * ok[:, None], dW * ok[:, None]
        wsum = W.sum(axis=0)
        if adaptive:
            new = _shrunk_mean(Z / bb[:, None], W, dW, S, mask, shape, groups)
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.where(Wv > 0, Q, np.nan), axis=0)
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
        P = _shrunk_mean(Q, Wq, Wv * dbw, np.zeros(Y.shape[1]), mask, shape, groups)
    else:
        P = _smooth((Wq * Q).sum(axis=0) / wsum, mask, shape)
    return P - P.mean()


def _reliable(
    estimator: Callable[[np.ndarray], np.ndarray | None], n: int
) -> tuple[np.ndarray, float] | None:
    """A pattern estimate and its noise variance per pixel, from even versus odd fields.

    ``estimator(index)`` estimates the pattern from the fields ``index``. The variance of the
    full-sample estimate is a quarter of the mean squared difference of the two half-sample
    estimates.
    """
    idx = np.arange(n)
    full = estimator(idx)
    halves = [estimator(idx[k::2]) for k in (0, 1)]
    if full is None or halves[0] is None or halves[1] is None:
        return None
    return full, float(np.mean((halves[0] - halves[1]) ** 2)) / 4.0


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
       not vary give the centred contrast no weight (today's estimate is kept).

    6. with a dark-field and ``dark_test``: is the dark level determined? An error ``delta``
       in the level scales the flat-field's contrast by ``1 / (1 - delta h)``, while leaving
       the dark-field out scales it by ``1 / (1 + d h)`` (``d`` the level): the level is kept
       when the uncertainty of the contrast it implies, ``sigma`` (the jackknife SD of the
       combined contrast factor of step 5, plus the disagreement of its two estimates beyond
       their variances), is at most ``dark_tolerance`` times the part of the contrast that
       leaving it out would lose, ``d h / (1 + d h)``. Otherwise the fit falls back to a flat-field without dark-field (``D = 0``),
       and the record says why (``dark_determined``, ``dark_reason``).

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

    def flat_only(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = M - D
        if not start.mean() > 0:
            raise ValueError("the fields have no positive signal: cannot estimate a flat-field")
        S, b, _ = _rank1_sparse(Y, D, start / start.mean(), mask, shape, adaptive=adaptive)
        return S, b

    if dark_given is not None:
        D = np.asarray(dark_given, dtype=np.float64).reshape(h * w)
        S, b = flat_only(D)
        info.update(darkfield_model="given", dark_level=round(float(D.mean()), 4))
    elif not darkfield:
        D = np.zeros(h * w)
        S, b = flat_only(D)
        info["darkfield_model"] = "none"
    else:
        d0, how = _dark_level_fit(Y, M)
        start = M - d0
        if not start.mean() > 0:
            raise ValueError("the fields have no signal above the dark level")
        D = np.full(h * w, d0)
        S, b, W = _rank1_sparse(Y, D, start / start.mean(), mask, shape, adaptive=adaptive)
        cv = float(np.std(b) / np.mean(b)) if np.mean(b) > 0 else 0.0
        shrink = 0.0
        source = "none"
        if dark_pattern and n >= 8:
            V = None if noise is None else noise.reshape(n, h * w).astype(np.float64)
            # the noise law when the fields follow it, else the baselines' variation; the
            # estimate's noise from even versus odd fields sets a James-Stein shrinkage. The
            # baselines' pattern is projected against the current flat-field, which holds part
            # of the pattern until the pattern is in the model: that estimate is refitted.
            for _ in range(4):
                est = None
                if V is not None and source != "baseline":
                    est = _reliable(
                        lambda i, W=W: _noise_pattern(
                            Y[i], V[i], W[i], mask, shape, adaptive=adaptive
                        ),
                        n,
                    )
                    source = "noise" if est is not None else "none"
                if est is None and cv >= min_baseline_cv:
                    est = _reliable(
                        lambda i, S=S, b=b, W=W: _dark_pattern(Y[i], S, b[i], W[i], mask, shape),
                        n,
                    )
                    source = "baseline" if est is not None else "none"
                if est is None:
                    break
                P, var = est
                power = float(np.mean(P * P))
                shrink = max(0.0, 1.0 - var / power) if power > 0 else 0.0
                if shrink <= 0:
                    break
                P = shrink * P
                d0, how = _dark_level_fit(Y - P, _smooth(M - P, mask, shape))
                D = np.maximum(d0 + P, 0.0)
                S, b, W = _rank1_sparse(Y, D, S, mask, shape, adaptive=adaptive)
                if source == "noise":
                    break
        # the dark level from the contrast regression is noisy, and its error scales the
        # flat-field's contrast; the fields centred on their mean carry the contrast free of
        # the dark-field: the two estimates of the contrast are combined by their variances
        # (delete-a-group jackknife of each), the dark level moved to match and (4) repeated
        contrast, weight = 1.0, 0.0
        sigma: float | None = None  # SD of the contrast factor the dark level implies
        h_mean = 0.0
        if n >= 8:
            ok = b > 0
            Wk = W * ok[:, None]
            inv_b = np.where(ok, 1.0 / np.where(ok, b, 1.0), 0.0)
            h_mean = float(
                ((Wk * inv_b[:, None]).sum(axis=0) / np.maximum(Wk.sum(axis=0), 1e-12)).mean()
            )
        if h_mean > 0:
            pattern = D - float(D.mean())
            m_pattern = _smooth(M - pattern, mask, shape)
            kg = min(GROUPS, n)
            groups = np.arange(n) % kg
            y_flat = Y - pattern
            levels = np.array([_dark_level(y_flat[groups != g], m_pattern) for g in range(kg)])
            # a level error delta scales the contrast by 1 + delta * h_mean
            var0 = _jackknife_variance(levels) * h_mean**2
            sigma = math.sqrt(var0)
            est_c = _centred_contrast(Y, S, b, W) if centred else None
            if est_c is not None:
                k_hat, k_var = est_c
                weight = var0 / (var0 + k_var) if var0 + k_var > 0 else 0.0
                contrast = 1.0 + weight * (k_hat - 1.0)
                # the combined factor's variance, plus the two estimates' disagreement beyond
                # their variances (a bias of one of them)
                excess = max(0.0, (k_hat - 1.0) ** 2 - var0 - k_var)
                sigma = math.sqrt(weight * k_var + excess)
                level = float(D.mean())
                delta = (contrast - 1.0) / h_mean
                delta = float(np.clip(delta, -level, float(Y.min()) - level))
                if delta != 0.0:
                    D = np.maximum(D + delta, 0.0)
                    S, b, W = _rank1_sparse(
                        Y, D, 1.0 + contrast * (S - 1.0), mask, shape, adaptive=adaptive
                    )
        info.update(contrast_factor=round(contrast, 4), contrast_weight=round(weight, 4))
        info.update(
            darkfield_model="surface" if shrink > 0 else "constant",
            dark_level=round(float(D.mean()), 4),
            dark_pattern_source=source if shrink > 0 else "none",
            dark_pattern_shrinkage=round(shrink, 4),
            baseline_cv=round(cv, 4),
        )
        if dark_test:
            # is the level determined? leaving the dark-field out loses the part
            # d h / (1 + d h) of the flat-field's contrast; keep the level when the contrast
            # it implies is known to within dark_tolerance of that
            dh = float(D.mean()) * h_mean
            lost = dh / (1.0 + dh) if dh > 0 else 0.0
            reason = ""
            if sigma is None:
                reason = "too few fields to measure the level's uncertainty"
            elif not lost > 0:
                reason = "the fitted dark level is 0"
            elif sigma > dark_tolerance * lost:
                reason = (
                    f"the level leaves the flat-field's contrast uncertain by {sigma:.3g} "
                    f"(factor SD), more than {dark_tolerance:g} x the {lost:.3g} that leaving "
                    "it out loses"
                )
            info.update(
                dark_level_from=how,
                dark_determined=not reason,
                dark_contrast_sd=None if sigma is None else round(sigma, 4),
                dark_contrast_lost=round(lost, 4),
            )
            if reason:
                info.update(
                    dark_reason=reason,
                    dark_level_rejected=info["dark_level"],
                    darkfield_model="none",
                    dark_level=0.0,
                    dark_pattern_source="none",
                    dark_pattern_shrinkage=0.0,
                )
                D = np.zeros(h * w)
                S, b = flat_only(D)
    info["baseline_median"] = round(float(np.median(b)), 4)
    info["smoothing"] = "adaptive" if adaptive else "fixed"
    sqrt_p = np.sqrt(h * w)
    s_coef = _coeffs(S.reshape(shape), mask)
    s_coef = s_coef / (s_coef[0, 0] / sqrt_p)
    d_coef = _coeffs(D.reshape(shape), mask) if D.any() else np.zeros_like(s_coef)
    return s_coef, d_coef, info


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


# --------------------------------------------------------------------------------------------
# public API


def fit(
    stack: np.ndarray | Iterable[np.ndarray],
    method: str = "basic",
    *,
    darkfield: bool = True,
    working_size: int = 64,
    max_frequency: float = 4.0,
    min_fields: int = 10,
    fallback: str = "none",
    screen: bool = True,
    screening: ScreeningParams = ScreeningParams(),
    names: Sequence[str] | None = None,
    dark_pattern: bool = True,
    smoothing: str = "adaptive",
    centred: bool = True,
    dark: str | float | np.ndarray | os.PathLike[str] = "auto",
) -> IlluminationResult:
    """Estimate flat-field and dark-field from many fields, with screening and fallback.

    Parameters
    ----------
    stack : ndarray of shape (N, H, W), or iterable of ndarray of shape (H, W)
        The fields of one channel (raw intensities, any real dtype). An iterable (e.g. a
        generator reading files) is consumed in chunks, so memory stays bounded.
    method : {"basic", "mean_smooth", "none"}
        Estimator (see the module documentation).
    darkfield : bool
        Estimate a dark-field (``basic`` only); otherwise the dark-field is zero.
        ``darkfield=False`` is ``dark="none"``.
    working_size : int
        Longest side of the grid the fields are downsampled to before fitting.
    max_frequency : float
        Highest spatial frequency kept in the surfaces, in cycles per field (radial cutoff of
        the cosine series); lower is smoother.
    min_fields : int
        Fewest usable fields for ``method``; below it, warn and use ``fallback``.
    fallback : {"mean_smooth", "none"}
        Method used when too few fields are usable (``mean_smooth`` needs at least one).
    screen : bool
        Leave blank, saturated and out-of-focus fields out (see :func:`screen_fields`).
    screening : ScreeningParams
        Screening thresholds.
    names : sequence of str, optional
        Name (file path) of each field, used in error and warning messages.
    dark_pattern : bool
        With ``method="basic"`` and ``darkfield``: estimate the dark-field's spatial pattern
        (from the variation of the fields' baselines and from the noise law); otherwise the
        dark-field is a constant offset.
    smoothing : {"adaptive", "fixed"}
        ``basic``: ``"adaptive"`` keeps each cosine coefficient of the flat-field and of the
        dark-field's pattern in proportion to how well the fields determine it (delete-a-group
        jackknife over the fields, James-Stein shrinkage), so the smoothness follows the data
        up to ``max_frequency``; ``"fixed"`` keeps every coefficient up to ``max_frequency``.
    centred : bool
        ``basic`` with ``darkfield``: combine the flat-field's contrast given by the fields
        centred on their mean (free of the dark-field) with the one implied by the dark level,
        by their variances, and move the dark level to match; ``False`` keeps the dark level of
        the contrast regression alone.
    dark : "auto", "none", float, ndarray of shape (H, W) or path
        The dark-field. ``"auto"`` (``basic``): estimated, and subtracted only when the fields
        determine its level (see :func:`_fit_basic`, step 6; otherwise the flat-field is fitted
        without dark-field and ``details`` says why); ``"none"``: zero; a number (the camera
        offset, raw units), an array or the path of a file (a dark frame of the fields' shape,
        :func:`read_dark_frame`): used as given, by ``basic`` and ``mean_smooth`` alike, and
        returned as the dark-field.

    Returns
    -------
    IlluminationResult
        ``flatfield`` and ``darkfield`` of shape (H, W), float32, and a record of the fields used.

    Raises
    ------
    ValueError
        Unknown method or fallback, an empty stack, a field that is not 2-D, whose shape
        differs from the others (naming the file when ``names`` is given) or that holds NaN;
        a ``dark`` that is not ``"auto"``, ``"none"``, a finite number >= 0 or an array of
        the fields' shape, or a given ``dark`` with ``darkfield=False``.
    """
    if method not in METHODS:
        raise ValueError(f"illumination method {method!r} is not one of {METHODS}")
    if fallback not in FALLBACKS:
        raise ValueError(f"illumination fallback {fallback!r} is not one of {FALLBACKS}")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"illumination smoothing {smoothing!r} is not one of {SMOOTHINGS}")
    if isinstance(stack, np.ndarray) and stack.ndim != 3:
        raise ValueError(f"stack has shape {stack.shape}; expected (N, H, W)")
    given = _check_dark(dark)
    if given is not None and not darkfield:
        raise ValueError("a given dark-field (dark=number or frame) contradicts darkfield=False")
    auto = darkfield and not (isinstance(dark, str) and dark == "none")
    small, stats, shape = downsample(
        stack,
        working_size=working_size,
        saturation_value=screening.saturation_value,
        names=names,
    )
    n = small.shape[0]
    excluded = screen_fields(stats, screening) if screen else {}
    used = np.ones(n, dtype=bool)
    used[list(excluded)] = False
    n_used = int(used.sum())
    chosen = method
    if method != "none" and n_used < min_fields:
        chosen = fallback if (fallback == "none" or n_used >= 1) else "none"
        warnings.warn(
            f"only {n_used} of {n} fields are usable for the {method!r} illumination estimate "
            f"(min_fields={min_fields}; excluded: {_count(excluded)}); using {chosen!r} instead",
            IlluminationWarning,
            stacklevel=2,
        )
    dark_full: np.ndarray | None = None
    d_small: np.ndarray | None = None
    if given is not None:
        if given.ndim == 2 and given.shape != tuple(shape):
            what = (
                f"dark frame {dark}" if isinstance(dark, (str, os.PathLike)) else "the dark frame"
            )
            raise ValueError(f"{what} has shape {given.shape}, but the fields have {tuple(shape)}")
        dark_full = np.broadcast_to(given, shape).astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(dark_full))[None, None]
        d_small = F.adaptive_avg_pool2d(t, small.shape[1:])[0, 0].double().numpy()
    if chosen == "none":
        return IlluminationResult(
            np.ones(shape, np.float32), np.zeros(shape, np.float32), "none", n, used, excluded
        )
    sub = small[used]
    details: dict[str, Any] = {}
    if chosen == "basic":
        s_coef, d_coef, details = _fit_basic(
            sub,
            darkfield=auto,
            dark_given=d_small,
            max_frequency=max_frequency,
            noise=None if stats.noise is None else stats.noise[used],
            dark_pattern=dark_pattern,
            adaptive=smoothing == "adaptive",
            centred=centred,
        )
        # the adaptive smoothing returns a constant when the fields show no shading
        ac = np.abs(s_coef.ravel()[1:])
        details["flatfield_uniform"] = bool(ac.max(initial=0.0) <= 1e-9 * abs(s_coef[0, 0]))
    else:
        s_coef, d_coef = _fit_mean_smooth(
            sub if d_small is None else sub - d_small.astype(np.float32),
            max_frequency=max_frequency,
        )
    if given is not None:
        details["dark"] = "frame" if given.ndim == 2 else "number"
    elif chosen == "basic":
        details["dark"] = "auto" if auto else "none"
    flat = _evaluate(s_coef, small.shape[1:], shape)
    flat = flat / flat.mean()
    # a flat-field must stay positive; clip pathological fits far below the mean
    flat = np.maximum(flat, 0.05).astype(np.float32)
    if dark_full is not None:
        dark_out = np.array(dark_full, dtype=np.float32)
    else:
        dark_out = _evaluate(d_coef, small.shape[1:], shape).astype(np.float32)
    return IlluminationResult(flat, dark_out, chosen, n, used, excluded, details)


def read_dark_frame(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a dark frame (camera offset image): a TIFF or PNG image, or a ``.npy`` array.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    ndarray of shape (H, W), float64
        Raw units.

    Raises
    ------
    ValueError
        Naming the file: missing, unreadable, not 2-D, not finite or negative.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dark frame {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read dark frame {path}: {exc}") from exc
    else:
        from hcsflow.io import read_image

        arr = read_image(path)
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"dark frame {path} has shape {arr.shape}; expected a 2-D image (H, W)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"dark frame {path} holds negative, NaN or infinite values")
    return arr


def _check_dark(dark: str | float | np.ndarray | os.PathLike[str]) -> np.ndarray | None:
    """Validate :func:`fit`'s ``dark``: ``None`` for ``"auto"``/``"none"``, else the array.

    A string other than ``"auto"``/``"none"`` (or a path) names a dark frame file.
    """
    if isinstance(dark, str) and dark in ("auto", "none"):
        return None
    if isinstance(dark, (str, os.PathLike)):
        return read_dark_frame(dark)
    if isinstance(dark, bool):
        raise ValueError(f"dark {dark!r} is not 'auto', 'none', a number or a dark frame")
    arr = np.asarray(dark, dtype=np.float64)
    if arr.ndim not in (0, 2):
        raise ValueError(f"the dark frame has shape {arr.shape}; expected a number or (H, W)")
    if not np.isfinite(arr).all():
        raise ValueError("the dark frame holds NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"the dark level must be >= 0, got minimum {float(arr.min())}")
    return arr


def estimate(
    stack: np.ndarray | Iterable[np.ndarray],
    method: str = "basic",
    *,
    darkfield: bool = True,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the flat-field and dark-field of a stack of fields.

    Parameters
    ----------
    stack : ndarray of shape (N, H, W), or iterable of ndarray of shape (H, W)
        The fields of one channel, raw intensities.
    method : {"basic", "mean_smooth", "none"}
        Estimator (see the module documentation).
    darkfield : bool
        Estimate a dark-field (``basic``); otherwise it is zero.
    **kwargs
        Further options of :func:`fit` (``working_size``, ``max_frequency``, ``min_fields``,
        ``fallback``, ``screen``, ``screening``, ``names``, ...).

    Returns
    -------
    flatfield : ndarray of shape (H, W), float32
        Mean 1.
    darkfield : ndarray of shape (H, W), float32
        Raw intensity units.
    """
    res = fit(stack, method, darkfield=darkfield, **kwargs)
    return res.flatfield, res.darkfield


def estimate_from_files(
    paths: Sequence[str | os.PathLike[str]],
    method: str = "basic",
    *,
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    **kwargs: Any,
) -> IlluminationResult:
    """Estimate from image files, reading them one chunk at a time.

    Parameters
    ----------
    paths : sequence of path
        One image file per field (single channel).
    method : str
        As in :func:`fit`.
    read : callable, optional
        Reads one file into an ndarray of shape (H, W); default :func:`hcsflow.io.read_image`.
    **kwargs
        Options of :func:`fit`.
    """
    if read is None:
        from hcsflow.io import read_image as read
    names = [str(p) for p in paths]
    return fit((read(p) for p in paths), method, names=names, **kwargs)


def correct(
    image: np.ndarray,
    flatfield: np.ndarray,
    darkfield: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Correct an image: ``(image - darkfield) / flatfield`` in float32.

    Parameters
    ----------
    image : ndarray of shape (..., H, W)
        Raw image(s), any real dtype; not modified.
    flatfield : ndarray of shape (H, W)
        Multiplicative shading (positive).
    darkfield : ndarray of shape (H, W), optional
        Additive offset in raw units; ``None`` means zero.
    out : ndarray of shape (..., H, W), float32, optional
        Where to write the result.

    Returns
    -------
    ndarray of shape (..., H, W), float32
    """
    image = np.asarray(image)
    if image.shape[-2:] != np.shape(flatfield) or (
        darkfield is not None and np.shape(darkfield) != np.shape(flatfield)
    ):
        raise ValueError(
            f"image of shape {image.shape} does not match flat-field {np.shape(flatfield)}"
            + ("" if darkfield is None else f" / dark-field {np.shape(darkfield)}")
        )
    flat = np.asarray(flatfield, dtype=np.float32)
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    if darkfield is None:
        np.copyto(out, image, casting="unsafe")
    else:
        np.subtract(image, np.asarray(darkfield, dtype=np.float32), out=out, dtype=np.float32)
    np.divide(out, flat, out=out)
    return out


# --------------------------------------------------------------------------------------------
# files


def save(
    path: str | os.PathLike[str],
    flatfield: np.ndarray,
    darkfield: np.ndarray,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write ``flatfield``, ``darkfield`` (float32) and ``meta`` (JSON) to an npz file, atomically.

    The archive has fixed timestamps, so equal inputs give byte-identical files.

    Parameters
    ----------
    path : path
        Destination ``.npz`` file.
    flatfield, darkfield : ndarray of shape (H, W)
    meta : mapping, optional
        JSON-serialisable description (method, fields used, configuration).
    """
    flat = np.asarray(flatfield, dtype=np.float32)
    dark = np.asarray(darkfield, dtype=np.float32)
    if flat.ndim != 2 or flat.shape != dark.shape:
        raise ValueError(
            f"cannot save {path}: flat-field {flat.shape} and dark-field {dark.shape} must be "
            "2-D of the same shape"
        )
    arrays = {
        "flatfield": flat,
        "darkfield": dark,
        "meta": np.array(json.dumps(dict(meta or {}), sort_keys=True, default=str)),
    }
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def load(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a file written by :func:`save`.

    Returns
    -------
    flatfield, darkfield : ndarray of shape (H, W), float32
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, dark = z["flatfield"], z["darkfield"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read illumination file {path}: {exc}") from exc
    return flat.astype(np.float32, copy=False), dark.astype(np.float32, copy=False)


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` record stored by :func:`save` (``{}`` if absent)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else {}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def summarize(meta: Mapping[str, Any], flatfield: np.ndarray, darkfield: np.ndarray) -> str:
    """One readable line about an estimate, for a job's log.

    Parameters
    ----------
    meta : mapping
        The record stored with the estimate (:meth:`IlluminationResult.meta` plus ``group``,
        ``channel`` and, when written for one plate, ``plate``), as :func:`load_meta` returns it.
    flatfield, darkfield : ndarray of shape (H, W)
        The estimate.

    Returns
    -------
    str
        For example ``"channel DNA of P1: basic from 180 of 200 fields (left out: 12 blank,
        8 saturated); flat-field 0.8213 to 1.124; dark-field 95.3 to 110.2 (mean 101.4); fit:
        baseline_cv 0.12, darkfield_model surface"``.
    """
    where = f"channel {meta.get('channel', '?')} of {meta.get('group', '?')}"
    if meta.get("plate") not in (None, meta.get("group")):
        where += f" (for plate {meta['plate']})"
    line = (
        f"{where}: {meta.get('method', '?')} from {meta.get('n_used', '?')} of "
        f"{meta.get('n_fields', '?')} fields"
    )
    excluded = meta.get("excluded") or {}
    if excluded:
        line += " (left out: " + ", ".join(f"{n} {why}" for why, n in excluded.items()) + ")"
    flat = np.asarray(flatfield, dtype=np.float64)
    dark = np.asarray(darkfield, dtype=np.float64)
    line += f"; flat-field {_fmt(float(flat.min()))} to {_fmt(float(flat.max()))}"
    if float(np.ptp(dark)) == 0.0:
        line += f"; dark-field constant {_fmt(float(dark.flat[0]))}"
    else:
        line += (
            f"; dark-field {_fmt(float(dark.min()))} to {_fmt(float(dark.max()))} "
            f"(mean {_fmt(float(dark.mean()))})"
        )
    fit = meta.get("fit") or {}
    if fit:
        line += "; fit: " + ", ".join(f"{k} {_fmt(v)}" for k, v in fit.items())
    return line


def dark_note(details: Mapping[str, Any]) -> str:
    """One line on where the dark-field came from, for the plot (``""`` when nothing to say).

    Parameters
    ----------
    details : mapping
        :attr:`IlluminationResult.details` (or the ``fit`` record of :func:`load_meta`).

    Returns
    -------
    str
        E.g. ``"dark-field: given (number)"``, ``"dark-field: fitted, level 101.3"`` or
        ``"dark-field left out: <reason> (fitted level 114.5)"``.
    """
    dark = details.get("dark")
    if dark in ("number", "frame"):
        return f"dark-field: given ({dark})"
    if dark == "none":
        return "dark-field: none (configured)"
    if "dark_determined" not in details:
        return ""
    if details["dark_determined"]:
        return f"dark-field: fitted, level {_fmt(details.get('dark_level'))}"
    return (
        f"dark-field left out: {details.get('dark_reason', 'not determined')} "
        f"(fitted level {_fmt(details.get('dark_level_rejected'))})"
    )


def plot(
    path: str | os.PathLike[str],
    flatfield: np.ndarray,
    darkfield: np.ndarray,
    title: str = "",
    note: str = "",
) -> None:
    """Write a PNG with the flat-field and dark-field side by side, atomically.

    Parameters
    ----------
    path : path
        Destination ``.png`` file.
    flatfield, darkfield : ndarray of shape (H, W)
    title : str
        Figure title (e.g. plate and channel).
    note : str
        A line printed under the panels (e.g. :func:`dark_note`: why the dark-field was left
        out).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, img, label, cmap in (
        (axes[0], flatfield, "flat-field (mean 1)", "viridis"),
        (axes[1], darkfield, "dark-field (raw units)", "magma"),
    ):
        im = ax.imshow(np.asarray(img), cmap=cmap)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if note:
        import textwrap

        fig.subplots_adjust(bottom=0.2)
        fig.text(0.5, 0.02, textwrap.fill(note, 110), ha="center", va="bottom", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def _count(excluded: Mapping[int, str]) -> str:
    reasons: dict[str, int] = {}
    for r in excluded.values():
        reasons[r] = reasons.get(r, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(reasons.items())) or "none"


# --------------------------------------------------------------------------------------------
# manifests


def sample_fields(manifest: pd.DataFrame, max_fields: int, seed: int = 0) -> pd.DataFrame:
    """A deterministic sample of up to ``max_fields`` fields of a manifest.

    Rows are first put in plate, well, site order, so the sample does not depend on the order
    of the manifest; then ``max_fields`` of them are drawn uniformly without replacement with a
    seeded generator and returned in that order.

    Parameters
    ----------
    manifest : DataFrame
        One row per field (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ...).
    max_fields : int
        Largest sample size (>= 1).
    seed : int
        Seed of the draw.
    """
    if max_fields < 1:
        raise ValueError(f"illumination.max_fields must be >= 1, got {max_fields}")
    keys = [k for k in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if k in manifest]
    ordered = manifest.sort_values(keys, kind="stable").reset_index(drop=True)
    if len(ordered) <= max_fields:
        return ordered
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ordered), size=max_fields, replace=False))
    return ordered.iloc[idx].reset_index(drop=True)


def estimate_from_manifest(
    manifest: pd.DataFrame,
    channel: str,
    method: str = "basic",
    *,
    max_fields: int = 200,
    seed: int = 0,
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    on_bad_image: str = "stop",
    root: ImagesRoot = None,
    **kwargs: Any,
) -> IlluminationResult:
    """Estimate one channel's flat-field and dark-field from a sample of a manifest's fields.

    Parameters
    ----------
    manifest : DataFrame
        Manifest rows (one plate, or several plates of a batch) with ``PathName_<channel>``
        and ``FileName_<channel>``.
    channel : str
        Channel name.
    method : str
        As in :func:`fit`.
    max_fields, seed : int
        Sample size and seed (:func:`sample_fields`).
    read : callable, optional
        Image reader; default :func:`hcsflow.io.read_image`.
    on_bad_image : {"stop", "drop"}
        A sampled file that cannot be read (the reader raises ``ValueError``) or whose shape
        differs from the first sampled field's: ``stop`` raises
        :class:`~hcsflow.io.BadImageError` naming the file, plate, well, site and channel;
        ``drop`` leaves the field out of the estimate and records it in the result's
        ``dropped`` (the sample itself is not redrawn, so it does not depend on which files
        are bad).
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<channel>`` is relative to, or plate -> folder for the
        manifests of several plates (:func:`hcsflow.io.field_paths`).
    **kwargs
        Options of :func:`fit`.

    Raises
    ------
    BadImageError
        With ``on_bad_image="stop"``, as above.
    """
    if on_bad_image not in ("stop", "drop"):
        raise ValueError(f"discovery.on_bad_image must be 'stop' or 'drop', got {on_bad_image!r}")
    if read is None:
        from hcsflow.io import read_image as read
    cols = [f"PathName_{channel}", f"FileName_{channel}"]
    missing = [c for c in cols if c not in manifest]
    if missing:
        raise ValueError(f"the manifest has no column {missing[0]} for channel {channel!r}")
    if len(manifest) == 0:
        raise ValueError(f"the manifest has no fields to estimate channel {channel!r} from")
    rows = sample_fields(manifest, max_fields, seed)
    names: list[str] = []  # filled as fields are read: fit() names field i by names[i]
    dropped: list[dict[str, Any]] = []

    def fields() -> Iterator[np.ndarray]:
        shape: tuple[int, ...] | None = None
        for row in rows.to_dict("records"):
            path = field_paths(row, [channel], root)[0]
            where = {
                "plate": str(row["Metadata_Plate"]) if "Metadata_Plate" in row else None,
                "well": str(row["Metadata_Well"]) if "Metadata_Well" in row else None,
                "site": int(row["Metadata_Site"]) if "Metadata_Site" in row else None,
                "channel": channel,
            }
            try:
                try:
                    img = np.asarray(read(path))
                except BadImageError as exc:
                    raise exc.at(**where) from exc
                except ValueError as exc:
                    raise BadImageError(path, str(exc), **where) from exc
                if shape is not None and img.shape != shape:
                    raise BadImageError(
                        path,
                        f"has shape {img.shape}, but the other sampled fields have {shape}",
                        **where,
                    )
            except BadImageError as exc:
                if on_bad_image == "stop":
                    raise
                warnings.warn(f"left out of the estimate: {exc}", IlluminationWarning, stacklevel=2)
                dropped.append(exc.record())
                continue
            shape = img.shape if shape is None else shape
            names.append(str(BadImageError(path, "field", **where)).removesuffix(": field"))
            yield img

    result = fit(fields(), method, names=names, **kwargs)
    result.dropped = dropped
    return result


def write_corrected(
    manifest: pd.DataFrame,
    profiles: Mapping[str, str | os.PathLike[str]],
    folder: str | os.PathLike[str],
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    root: ImagesRoot = None,
) -> int:
    """Write a corrected float32 TIFF of every field and channel of a manifest.

    Files are named like the raw ones (suffix replaced by ``.tif``) inside ``folder``, each
    written atomically. Returns the number of images written.

    Parameters
    ----------
    manifest : DataFrame
        Manifest rows with ``PathName_<ch>`` and ``FileName_<ch>``.
    profiles : mapping of str to path
        Channel name -> npz file written by :func:`save`.
    folder : path
        Output folder (created).
    read : callable, optional
        Image reader; default :func:`hcsflow.io.read_image`.
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<ch>`` is relative to (:func:`hcsflow.io.field_paths`).
    """
    import tifffile

    if read is None:
        from hcsflow.io import read_image as read
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for ch, path in sorted(profiles.items()):
        flat, dark = load(path)
        for row in manifest.to_dict("records"):
            image = field_paths(row, [ch], root)[0]
            img = read(image)
            if img.shape != flat.shape:
                raise ValueError(
                    f"image {image} has shape {img.shape}, but the {ch} flat-field "
                    f"{path} has {flat.shape}"
                )
            with atomic_path(folder / (image.stem + ".tif")) as tmp:
                tifffile.imwrite(tmp, correct(img, flat, dark), compression="zlib")
            n += 1
    return n
