"""Feature selection: drop uninformative, redundant, incomplete or blocklisted features.

The operations follow pycytominer's ``feature_select`` and run in the order given, each on the
features left by the previous ones: ``variance`` (pycytominer ``variance_threshold``),
``frequency`` (``frequency_threshold``: frequency and uniqueness ratios), ``na``
(``drop_na_columns``), ``outlier`` (``drop_outliers``), ``correlation``
(``correlation_threshold``) and ``blocklist``. Their thresholds are one
:class:`FeatureSelectParams`. Feature statistics are computed column by column or in row
chunks, so that no operation copies a large table whole.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.profiling.columns import iter_columns, resolve_features

#: Feature-selection operations in their default order (see :func:`feature_select`).
DEFAULT_OPERATIONS = ("blocklist", "na", "variance", "outlier", "correlation")

_OPERATION_ALIASES = {
    "variance": "variance",
    "variance_threshold": "variance",
    "frequency": "frequency",
    "frequency_threshold": "frequency",
    "na": "na",
    "drop_na_columns": "na",
    "correlation": "correlation",
    "correlation_threshold": "correlation",
    "blocklist": "blocklist",
    "outlier": "outlier",
    "drop_outliers": "outlier",
}

#: Default blocklist (regular expressions matched against whole feature names): features known
#: to be noisy in Cell Painting (nuclear Manders/RWC colocalization, the coarsest granularity
#: scales of the nucleus), and positional or bookkeeping measurements that carry no phenotype.
DEFAULT_BLOCKLIST = (
    r"Nuclei_Correlation_(Manders|RWC)_.*",
    r"Nuclei_Granularity_1[4-6]_.*",
    r".*_Location_.*",
    r".*_AreaShape_Center(X|Y|Z)",
    r".*_Parent_.*",
    r".*_Children_.*",
    r".*_Number_Object_Number",
)


class _Columns:
    """Some columns of a DataFrame, read in row chunks by :func:`_corr_matrix`."""

    def __init__(self, frame: pd.DataFrame, names: Sequence[str]) -> None:
        self.frame = frame
        self.names = list(names)


# One pass over row chunks accumulates every sum the correlations need; it stays one
# function (over 80 lines) so that the sums and their masks are not passed between parts.
def _corr_matrix(x: np.ndarray | _Columns, chunk: int = 1 << 14) -> np.ndarray:
    """Pearson correlation between the columns of ``x``, pairwise-complete where NaN occur.

    Equals ``numpy.corrcoef`` without NaN and ``pandas.DataFrame.corr`` with NaN (each pair
    uses the rows where both features are present). Accumulated in float64 over row chunks
    from sums of cross-products of the columns shifted by their means; the masked sums are
    only formed for the columns that have missing values, so that a few incomplete
    features cost little more than complete data.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features), or columns of a DataFrame
        DataFrame columns are read in row chunks (never copied whole).

    Returns
    -------
    ndarray of shape (n_features, n_features); NaN where a feature is constant (among the
    rows shared with the other feature).
    """
    if isinstance(x, _Columns):
        frame, names = x.frame, x.names
        arrays = list(iter_columns(frame, names, chunk_bytes=1 << 27))

        def rows(a: int, b: int) -> np.ndarray:
            # assembled feature by feature (contiguous copies), used through its transpose
            part = np.empty((len(arrays), min(b, len(frame)) - a), dtype=np.float64)
            for j, arr in enumerate(arrays):
                part[j] = arr[a:b]
            return part.T

        n, p = len(frame), len(names)
        nan_any = np.zeros(p, dtype=bool)
        shift = np.zeros(p)
        for j, col in enumerate(arrays):
            ok = ~np.isnan(col)
            nan_any[j] = not ok.all()
            shift[j] = col[ok].mean() if ok.any() else 0.0
    else:

        def rows(a: int, b: int) -> np.ndarray:
            return np.asarray(x[a:b], dtype=np.float64)

        n, p = x.shape
        nan_any = np.isnan(x).any(axis=0)
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                shift = np.nanmean(x, axis=0) if n else np.zeros(p)
    incomplete = np.flatnonzero(nan_any)
    k = incomplete.size
    shift = np.where(np.isfinite(shift), shift, 0.0)
    s_xy = np.zeros((p, p))
    col_sum = np.zeros(p)
    col_sq = np.zeros(p)
    s_x_inc = np.zeros((p, k))  # sum of x_i over rows where incomplete feature j is present
    s_xx_inc = np.zeros((p, k))
    m_inc = np.zeros((k, k))  # rows where both incomplete features are present
    n_inc = np.zeros(k)  # rows where an incomplete feature is present
    for s in range(0, n, chunk):
        b = rows(s, s + chunk) - shift
        if k:
            ok = ~np.isnan(b[:, incomplete])
            b[np.isnan(b)] = 0.0
            m = ok.astype(np.float64)
        s_xy += b.T @ b
        col_sum += b.sum(axis=0)
        sq = b * b
        col_sq += sq.sum(axis=0)
        if k:
            s_x_inc += b.T @ m
            s_xx_inc += sq.T @ m
            m_inc += m.T @ m
            n_inc += m.sum(axis=0)
        del b, sq
    # assemble the pairwise sums: for a complete feature j, "rows where j is present" is all
    m_sum = np.full((p, p), float(n))
    s_x = np.repeat(col_sum[:, None], p, axis=1)
    s_xx = np.repeat(col_sq[:, None], p, axis=1)
    if k:
        m_sum[incomplete, :] = n_inc[:, None]
        m_sum[:, incomplete] = n_inc[None, :]
        m_sum[np.ix_(incomplete, incomplete)] = m_inc
        s_x[:, incomplete] = s_x_inc
        s_xx[:, incomplete] = s_xx_inc
    with np.errstate(all="ignore"):
        cov = s_xy - s_x * s_x.T / m_sum
        var_i = s_xx - s_x * s_x / m_sum
        var_j = var_i.T
        c = cov / np.sqrt(var_i * var_j)
    bad = (m_sum < 1) | ~(var_i > 0) | ~(var_j > 0) | ~np.isfinite(c)
    c[bad] = np.nan
    return np.clip(c, -1.0, 1.0)


def _exclude_variance(df: pd.DataFrame, names: list[str], min_variance: float) -> np.ndarray:
    out = np.zeros(len(names), dtype=bool)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, col in enumerate(iter_columns(df, names)):
            var = np.nanvar(col)
            if min_variance == 0:
                var = np.fmin(var, np.nanmax(col) - np.nanmin(col))
            out[j] = not var > min_variance
    return out


def _exclude_frequency(
    df: pd.DataFrame, names: list[str], freq_cut: float, unique_cut: float
) -> np.ndarray:
    n = df.shape[0]
    out = np.zeros(len(names), dtype=bool)
    for j, col in enumerate(iter_columns(df, names)):
        _, counts = np.unique(col[~np.isnan(col)], return_counts=True)
        if counts.size < 2:
            out[j] = True
            continue
        top = np.sort(counts)[::-1]
        if top[1] / top[0] < freq_cut or counts.size / n < unique_cut:
            out[j] = True
    return out


def _exclude_correlation(x: np.ndarray | _Columns, threshold: float) -> np.ndarray:
    c = _corr_matrix(x)
    # rank features by the sum of their absolute correlations (lowest first); of each pair
    # correlated above the threshold, the one ranked higher is dropped (pycytominer's rule)
    total = np.nansum(np.abs(c), axis=0)
    order = np.argsort(total, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    with np.errstate(invalid="ignore"):
        high = c > threshold
    np.fill_diagonal(high, False)
    lower_ranked = rank[None, :] < rank[:, None]  # [f, g]: g ranked lower than f
    return (high & lower_ranked).any(axis=1)


@dataclass(frozen=True)
class FeatureSelectParams:
    """Operations and thresholds of :func:`feature_select` (config ``campaign.feature_select``).

    Attributes
    ----------
    operations : tuple of str
        Any of ``blocklist``, ``na``, ``variance``, ``frequency``, ``outlier``,
        ``correlation`` (the pycytominer names ``drop_na_columns``, ``variance_threshold``,
        ... are accepted too), run in this order.
    corr_threshold : float
        Pairs of features correlated above this (in [0, 1]) lose one member.
    na_cutoff : float
        Largest fraction of missing values a feature may have (in [0, 1]).
    min_variance : float
        A feature whose population variance is at most this is dropped (>= 0).
    freq_cut, unique_cut : float
        Thresholds of the ``frequency`` rule (in [0, 1]).
    blocklist : tuple of str
        Regular expressions matched against whole feature names.
    outlier_cutoff : float
        A feature with an absolute value above this anywhere is dropped (> 0).

    Raises
    ------
    ValueError
        On an unknown operation or a threshold out of range.
    """

    operations: tuple[str, ...] = DEFAULT_OPERATIONS
    corr_threshold: float = 0.9
    na_cutoff: float = 0.05
    min_variance: float = 1e-6
    freq_cut: float = 0.05
    unique_cut: float = 0.01
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    outlier_cutoff: float = 500.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", tuple(self.operations))
        object.__setattr__(self, "blocklist", tuple(self.blocklist))
        if not 0 <= self.corr_threshold <= 1:
            raise ValueError(f"corr_threshold must be in [0, 1], got {self.corr_threshold}")
        if not 0 <= self.na_cutoff <= 1:
            raise ValueError(f"na_cutoff must be in [0, 1], got {self.na_cutoff}")
        if not 0 <= self.freq_cut <= 1 or not 0 <= self.unique_cut <= 1:
            raise ValueError("freq_cut and unique_cut must be in [0, 1]")
        if self.min_variance < 0:
            raise ValueError(f"min_variance must be >= 0, got {self.min_variance}")
        if self.outlier_cutoff <= 0:
            raise ValueError(f"outlier_cutoff must be > 0, got {self.outlier_cutoff}")
        for op in self.operations:
            if op not in _OPERATION_ALIASES:
                raise ValueError(
                    f"unknown feature-selection operation {op!r}; choose from "
                    f"{sorted(set(_OPERATION_ALIASES.values()))}"
                )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FeatureSelectParams:
        """Build from the validated configuration section ``campaign.feature_select``."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})

    def steps(self) -> tuple[str, ...]:
        """The operations under their short names (``variance_threshold`` -> ``variance``)."""
        return tuple(_OPERATION_ALIASES[op] for op in self.operations)


def _params(params: FeatureSelectParams | None, options: Mapping[str, Any]) -> FeatureSelectParams:
    """``params`` (default :class:`FeatureSelectParams`) with the fields in ``options`` replaced."""
    base = FeatureSelectParams() if params is None else params
    return dataclasses.replace(base, **options) if options else base


def _exclude_step(
    profiles: pd.DataFrame, op: str, remaining: list[str], params: FeatureSelectParams
) -> np.ndarray:
    """Mask over ``remaining`` of the features one operation (not ``blocklist``) excludes."""
    # column by column, or in row chunks: the table is never copied whole
    if op == "na":
        n = max(len(profiles), 1)
        return np.array(
            [np.isnan(c).sum() / n > params.na_cutoff for c in iter_columns(profiles, remaining)]
        )
    if op == "variance":
        return _exclude_variance(profiles, remaining, params.min_variance)
    if op == "frequency":
        return _exclude_frequency(profiles, remaining, params.freq_cut, params.unique_cut)
    if op == "outlier":
        with np.errstate(invalid="ignore"):
            return np.array(
                [
                    bool(np.nanmax(np.abs(c), initial=0.0) > params.outlier_cutoff)
                    for c in iter_columns(profiles, remaining)
                ]
            )
    return _exclude_correlation(_Columns(profiles, remaining), params.corr_threshold)


def feature_select_excluded(
    profiles: pd.DataFrame,
    params: FeatureSelectParams | None = None,
    *,
    features: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, list[str]]:
    """Features each selection operation excludes, in the order the operations run.

    See :func:`feature_select` for the parameters. Returns an ordered mapping
    ``operation -> excluded features`` (in table order); each operation sees only the
    features left by the operations before it.
    """
    feats = resolve_features(profiles, features, "feature_select")
    params = _params(params, options)
    patterns = [re.compile(p) for p in params.blocklist]
    remaining = list(feats)
    excluded: dict[str, list[str]] = {}
    for op in params.steps():
        if op == "blocklist":
            drop = {f for f in remaining if any(p.fullmatch(f) for p in patterns)}
        elif not remaining:
            drop = set()
        else:
            mask = _exclude_step(profiles, op, remaining, params)
            drop = {f for f, m in zip(remaining, mask, strict=True) if m}
        excluded[op] = [f for f in remaining if f in drop]
        remaining = [f for f in remaining if f not in drop]
    return excluded


def feature_select(
    profiles: pd.DataFrame,
    params: FeatureSelectParams | None = None,
    *,
    features: Sequence[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Drop uninformative, redundant, incomplete or blocklisted features.

    Operations run in the order given; each sees only the features that the previous ones
    kept (as in pycytominer's ``feature_select``, so the result depends on the order):

    ``blocklist``
        Drop features whose whole name matches one of the regular expressions ``blocklist``.
    ``na``
        Drop features with a fraction of missing values above ``na_cutoff``.
    ``variance``
        Drop features whose population variance (NaN skipped) is at most ``min_variance``
        (pycytominer 1.7 ``variance_threshold``, scikit-learn's ``VarianceThreshold``).
    ``frequency``
        The near-zero-variance rule of caret (pycytominer's ``frequency_threshold``, called
        ``variance_threshold`` before pycytominer 1.5): drop features with a single value, with
        (count of the second most common value / count of the most common) < ``freq_cut``,
        or with (number of distinct values / number of rows) < ``unique_cut``.
    ``outlier``
        Drop features with an absolute value above ``outlier_cutoff`` anywhere (pycytominer's
        ``drop_outliers``); after ``mad_robustize`` such values come from a MAD of (nearly)
        zero among the controls and would dominate any distance.
    ``correlation``
        Pearson correlation between features (pairwise-complete when values are missing).
        Features are ranked by the sum of their absolute correlations with all features; for
        every pair correlated above ``corr_threshold`` (positive correlation, as in
        pycytominer) the member with the larger sum is dropped. Ties in that sum are broken by
        table order.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
    params : FeatureSelectParams, optional
        Operations and thresholds (the defaults of :class:`FeatureSelectParams` when None).
    features : sequence of str, optional
        Feature columns; by default every numeric non-``Metadata_*`` column.
    **options
        Fields of :class:`FeatureSelectParams` replacing those of ``params``, e.g.
        ``operations=["na", "correlation"], corr_threshold=0.8``.

    Returns
    -------
    DataFrame with the excluded feature columns removed (other columns unchanged).
    """
    excluded = feature_select_excluded(profiles, params, features=features, **options)
    drop = {f for fs in excluded.values() for f in fs}
    return profiles[[c for c in profiles.columns if c not in drop]].copy()
