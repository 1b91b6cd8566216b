"""Normalization of profiles against control wells, plate by plate (pycytominer ``normalize``).

``mad_robustize``: ``(x - median) / (1.4826 * MAD + epsilon)``; ``standardize``:
``(x - mean) / std`` (population std, constant features left unscaled); both fitted on the
control wells of each plate and applied to all wells of that plate.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.profiling.aggregate import _group_codes, _group_reduce
from hcsflow.profiling.columns import iter_columns, require_columns, resolve_features


def _control_mask(profiles: pd.DataFrame, control: Mapping[str, Any] | None) -> np.ndarray:
    if control is None:
        return np.ones(len(profiles), dtype=bool)
    require_columns(profiles, control.keys(), "normalize: control")
    mask = np.ones(len(profiles), dtype=bool)
    for col, value in control.items():
        if isinstance(value, (list, tuple, set)):
            mask &= profiles[col].isin(list(value)).to_numpy()
        else:
            mask &= (profiles[col] == value).fillna(False).to_numpy(dtype=bool)
    return mask


def _constant_feature(var: np.ndarray, mean: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance indistinguishable from zero given floating-point error in mean and variance."""
    eps = np.finfo(np.float64).eps
    upper = n * eps * var + (n * mean * eps) ** 2
    return var <= upper


def normalize(
    profiles: pd.DataFrame,
    method: str = "mad_robustize",
    control: Mapping[str, Any] | None = None,
    by: str | Sequence[str] | None = "Metadata_Plate",
    features: Sequence[str] | None = None,
    epsilon: float = 1e-18,
) -> pd.DataFrame:
    """Normalize features against control wells, separately within each plate.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
        Well profiles (or single cells): ``Metadata_*`` columns and features.
    method : {"mad_robustize", "standardize", "none"}
        ``mad_robustize``: ``(x - median) / (1.4826 * MAD + epsilon)``; ``standardize``:
        ``(x - mean) / std`` with the population standard deviation (features constant among
        the controls are only centred). Statistics skip NaN.
    control : mapping of column to value, optional
        Rows used to fit the statistics, e.g. ``{"Metadata_Role": "negcon"}`` (a value may be
        a list of accepted values). None fits on all rows.
    by : str or sequence of str or None
        Column(s) whose groups are normalized separately (the plate by default); None treats
        the table as one group.
    features : sequence of str, optional
        Feature columns; by default every numeric non-``Metadata_*`` column.
    epsilon : float
        Added to the scaled MAD (pycytominer's ``mad_robustize_epsilon``).

    Returns
    -------
    DataFrame of the same shape and column order, features as float64.
    """
    if method not in ("mad_robustize", "standardize", "none"):
        raise ValueError(
            f"normalization method must be 'mad_robustize', 'standardize' or 'none', got {method!r}"
        )
    if method == "none":
        return profiles.copy()
    feats = resolve_features(profiles, features, "normalize")
    ctrl = _control_mask(profiles, control)
    if by is None:
        codes = np.zeros(len(profiles), dtype=np.int64)
        keys = pd.DataFrame({"all rows": ["all"]})
    else:
        by_list = [by] if isinstance(by, str) else list(by)
        require_columns(profiles, by_list, "normalize: by")
        codes, keys = _group_codes(profiles, by_list)
    n_groups = len(keys)
    fit_rows = np.flatnonzero(ctrl)
    fit_codes = codes[fit_rows]
    fit_count = np.bincount(fit_codes, minlength=n_groups)
    if (fit_count == 0).any():
        key = keys.iloc[int(np.flatnonzero(fit_count == 0)[0])].to_dict()
        raise ValueError(f"normalize: no control rows {dict(control or {})} in group {key}")
    # control rows, one feature per row: (n_features, n_fit)
    fit = np.empty((len(feats), fit_rows.size), dtype=np.float64)
    for j, col in enumerate(iter_columns(profiles, feats)):
        fit[j] = col[fit_rows]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        center, scale = _fit(fit, fit_codes, n_groups, method, epsilon)
        del fit
        result = _apply(profiles, feats, codes, center, scale)
    others = [c for c in profiles.columns if c not in set(feats)]
    out = pd.concat(
        [
            profiles[others].reset_index(drop=True),
            pd.DataFrame(result.T, columns=feats, copy=False),
        ],
        axis=1,
    )
    out.index = profiles.index
    if list(out.columns) != list(profiles.columns):
        out = out[list(profiles.columns)]
    return out


def _fit(
    fit: np.ndarray, codes: np.ndarray, n_groups: int, method: str, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale of each group x feature, shape (n_groups, n_features) each.

    ``fit`` holds the control rows one feature per row, shape (n_features, n_fit); it is
    overwritten (``mad_robustize``).
    """
    if method == "mad_robustize":
        center = _group_reduce(fit.T, codes, n_groups, "median")[0]  # (G, p)
        np.subtract(fit, center[codes].T, out=fit)
        np.abs(fit, out=fit)
        mad = _group_reduce(fit.T, codes, n_groups, "median")[0] / (1 / 1.4826)
        return center, mad + epsilon
    ok = ~np.isnan(fit)
    n_ok = np.stack([np.bincount(codes, w, minlength=n_groups) for w in ok], axis=1)
    vals = np.where(ok, fit, 0.0)
    total = np.stack([np.bincount(codes, w, minlength=n_groups) for w in vals], axis=1)
    center = total / n_ok
    dev = np.where(ok, fit - center[codes].T, 0.0)
    var = np.stack([np.bincount(codes, w * w, minlength=n_groups) for w in dev], axis=1) / n_ok
    return center, np.where(_constant_feature(var, center, n_ok), 1.0, np.sqrt(var))


def _apply(
    profiles: pd.DataFrame,
    feats: Sequence[str],
    codes: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
) -> np.ndarray:
    """``(x - center) / scale`` of every row's group, shape (n_features, n_rows)."""
    # (n_features, n_rows), so that a frame of its transpose takes it without a copy
    result = np.empty((len(feats), len(profiles)), dtype=np.float64)
    contiguous = bool(np.all(codes[1:] >= codes[:-1]))  # rows already grouped in order
    n_groups = center.shape[0]
    bounds = np.searchsorted(codes, np.arange(n_groups + 1)) if contiguous else None
    for j, col in enumerate(iter_columns(profiles, feats)):
        if contiguous:
            for g in range(n_groups):
                a, b = bounds[g], bounds[g + 1]
                np.subtract(col[a:b], center[g, j], out=result[j, a:b])
                result[j, a:b] /= scale[g, j]
        else:
            result[j] = (col - center[codes, j]) / scale[codes, j]
    return result
