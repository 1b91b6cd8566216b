"""Well profiles: aggregation, normalization, feature selection, batch correction, consensus.

One operation per function, DataFrame in and DataFrame out, in the manner of pycytominer.
Columns whose name starts with ``Metadata_`` are metadata; every other numeric column is a
feature. No function modifies its input.

The operations follow pycytominer's definitions wherever a method of the same name exists, so
that a profile produced here has the same numbers as one produced by pycytominer 1.7:

* :func:`aggregate` - median (or mean) of each feature over the cells of a well; NaN skipped.
  The number of cells of the well is added as the feature ``Image_Count_Cells``.
* :func:`normalize` - ``mad_robustize``: ``(x - median) / (1.4826 * MAD + epsilon)`` and
  ``standardize``: ``(x - mean) / std`` (population std, constant features left unscaled),
  both fitted on the control wells of each plate and applied to all wells of that plate.
* :func:`feature_select` - the operations run in the order given, each on the features left
  by the previous ones, exactly as pycytominer's ``feature_select`` does: ``variance``
  (pycytominer ``variance_threshold``), ``frequency`` (``frequency_threshold``: frequency and
  uniqueness ratios), ``na`` (``drop_na_columns``), ``correlation``
  (``correlation_threshold``) and ``blocklist``.

Sphering (:func:`sphere`, ZCA fitted on negative controls) and :func:`harmony` (Korsunsky et al.
2019, Nat Methods 16:1289) follow the JUMP Cell Painting profiling recipe.
:func:`aggregate_files` streams a plate's per-shard cell tables one file at a time, so memory
is bounded by the largest shard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

METADATA_PREFIX = "Metadata_"
#: Name of the per-well cell-count feature added by :func:`aggregate`.
COUNT_FEATURE = "Image_Count_Cells"

#: Feature-selection operations in their default order (see :func:`feature_select`).
DEFAULT_OPERATIONS = ("blocklist", "na", "variance", "correlation")

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

#: Column names of common external profile tables mapped onto ours (first match wins).
DEFAULT_COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "Metadata_Plate": ("Metadata_Plate", "Metadata_plate", "Metadata_Assay_Plate_Barcode"),
    "Metadata_Well": ("Metadata_Well", "Metadata_well", "Metadata_well_position"),
    "Metadata_Compound": (
        "Metadata_Compound",
        "Metadata_broad_sample",
        "Metadata_pert_iname",
        "Metadata_JCP2022",
        "Metadata_InChIKey",
    ),
    "Metadata_Dose": (
        "Metadata_Dose",
        "Metadata_mmoles_per_liter",
        "Metadata_dose_recode",
        "Metadata_concentration",
    ),
    "Metadata_Role": ("Metadata_Role", "Metadata_pert_type", "Metadata_control_type"),
    "Metadata_MoA": ("Metadata_MoA", "Metadata_moa", "Metadata_MOA"),
    "Metadata_Target": ("Metadata_Target", "Metadata_target"),
    "Metadata_Batch": ("Metadata_Batch", "Metadata_batch", "Metadata_Batch_Number"),
}

#: Values of a role column in external tables mapped onto our roles.
DEFAULT_ROLE_VALUES: dict[str, str] = {
    "negcon": "negcon",
    "negative_control": "negcon",
    "control": "negcon",
    "ctrl": "negcon",
    "poscon": "poscon",
    "positive_control": "poscon",
    "trt": "trt",
    "treatment": "trt",
    "compound": "trt",
    "empty": "empty",
}

REQUIRED_PROFILE_COLUMNS = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Compound",
    "Metadata_Dose",
    "Metadata_Role",
)


# ----------------------------------------------------------------------------------------------
# column helpers


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Names of the metadata columns (prefix ``Metadata_``), in table order."""
    return [c for c in df.columns if str(c).startswith(METADATA_PREFIX)]


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Names of the feature columns: numeric (not boolean) and not ``Metadata_*``."""
    out = []
    for c in df.columns:
        if str(c).startswith(METADATA_PREFIX):
            continue
        dt = df[c].dtype
        if pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt):
            out.append(c)
    return out


def _resolve_features(df: pd.DataFrame, features: Sequence[str] | None, what: str) -> list[str]:
    if features is None:
        feats = feature_columns(df)
    else:
        feats = list(features)
        missing = [f for f in feats if f not in df.columns]
        if missing:
            raise ValueError(f"{what}: feature column(s) not in the table: {missing[:5]}")
        bad = [f for f in feats if not pd.api.types.is_numeric_dtype(df[f].dtype)]
        if bad:
            raise ValueError(f"{what}: feature column(s) are not numeric: {bad[:5]}")
    if not feats:
        raise ValueError(f"{what}: the table has no feature columns (numeric, not Metadata_*)")
    return feats


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: column(s) {missing} not in the table (it has {len(df.columns)} columns, "
            f"metadata: {metadata_columns(df)[:12]})"
        )


def _as_float64(df: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Features as a C-contiguous float64 array of shape (n_rows, n_features)."""
    return np.ascontiguousarray(df[list(features)].to_numpy(dtype=np.float64, na_value=np.nan))


# ----------------------------------------------------------------------------------------------
# grouping


def _group_codes(df: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group number of each row (groups sorted by key) and the key of each group.

    Returns
    -------
    codes : ndarray of shape (n_rows,), int64
    keys : DataFrame of shape (n_groups, len(by))
    """
    by = list(by)
    grouped = df.groupby(by, sort=True, dropna=False, observed=True)
    codes = grouped.ngroup().to_numpy(dtype=np.int64)
    keys = grouped.size().reset_index()[by]
    return codes, keys


def _group_slices(codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order that makes groups contiguous, and the start offset of each group (+ end)."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_groups)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return order, bounds


def _constant_metadata(
    df: pd.DataFrame, codes: np.ndarray, n_groups: int, exclude: Sequence[str]
) -> pd.DataFrame:
    """Metadata columns constant within every group, one row per group (NaN equals NaN)."""
    cols = [c for c in metadata_columns(df) if c not in exclude]
    if not cols:
        return pd.DataFrame(index=range(n_groups))
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups))
    first_rows = order[starts]
    keep = {}
    for c in cols:
        s = df[c]
        first = s.iloc[first_rows].reset_index(drop=True)
        ref = first.iloc[codes].reset_index(drop=True)
        vals = s.reset_index(drop=True)
        same = (vals == ref) | (vals.isna() & ref.isna())
        if bool(same.all()):
            keep[c] = first
    return pd.DataFrame(keep)


def _group_reduce(
    x: np.ndarray, codes: np.ndarray, n_groups: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Median or mean of each column of ``x`` within each group, NaN skipped.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)
        Any float dtype; reduced in float64.
    codes : ndarray of shape (n_rows,)
        Group number of each row in ``0 .. n_groups - 1``.

    Returns
    -------
    values : ndarray of shape (n_groups, n_features), float64
    counts : ndarray of shape (n_groups,), int64
    """
    order, bounds = _group_slices(codes, n_groups)
    out = np.empty((n_groups, x.shape[1]), dtype=np.float64)
    with np.errstate(all="ignore"):
        for g in range(n_groups):
            block = np.asarray(x[order[bounds[g] : bounds[g + 1]]], dtype=np.float64)
            nan = np.isnan(block)
            if method == "median":
                if nan.any():
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        out[g] = np.nanmedian(block, axis=0)
                else:
                    out[g] = np.median(block, axis=0)
            else:
                if nan.any():
                    n_ok = (~nan).sum(axis=0)
                    total = np.where(nan, 0.0, block).sum(axis=0)
                    out[g] = np.where(n_ok > 0, total / np.maximum(n_ok, 1), np.nan)
                else:
                    out[g] = block.mean(axis=0)
    return out, np.diff(bounds)


# ----------------------------------------------------------------------------------------------
# aggregation


def _qc_mask(cells: pd.DataFrame, qc_columns: Sequence[str]) -> np.ndarray:
    """True for rows flagged by any QC column (missing flags count as not flagged)."""
    _require_columns(cells, qc_columns, "QC exclusion (config profiles.qc_columns)")
    flagged = np.zeros(len(cells), dtype=bool)
    for c in qc_columns:
        col = cells[c]
        if not (pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype)):
            raise ValueError(
                f"QC column {c!r} must be boolean (True = flagged), found dtype {col.dtype}"
            )
        flagged |= col.fillna(False).to_numpy(dtype=bool)
    return flagged


def aggregate(
    cells: pd.DataFrame,
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    method: str = "median",
    qc_columns: Sequence[str] = (),
    features: Sequence[str] | None = None,
    count_feature: str | None = COUNT_FEATURE,
) -> pd.DataFrame:
    """Aggregate single-cell measurements into one profile per well (or other strata).

    Parameters
    ----------
    cells : DataFrame of shape (n_cells, n_columns)
        One row per cell: ``Metadata_*`` columns and numeric features.
    strata : sequence of str
        Columns that define a profile; output rows are sorted by them.
    method : {"median", "mean"}
        Statistic of each feature over the cells of a group; NaN values are skipped.
    qc_columns : sequence of str
        Boolean columns; a cell with True in any of them is left out (QC-flagged cells or
        cells of QC-flagged fields).
    features : sequence of str, optional
        Feature columns; by default every numeric non-``Metadata_*`` column.
    count_feature : str or None
        Name of the feature that receives the number of cells aggregated per group
        (``Image_Count_Cells`` by default); None leaves it out.

    Returns
    -------
    DataFrame of shape (n_groups, ...)
        The strata, the metadata columns constant within every group, the count feature and
        the aggregated features (float64).
    """
    if method not in ("median", "mean"):
        raise ValueError(f"aggregation method must be 'median' or 'mean', got {method!r}")
    strata = list(strata)
    _require_columns(cells, strata, "aggregate: strata")
    feats = _resolve_features(cells, features, "aggregate")
    feats = [f for f in feats if f not in strata and f != count_feature]
    if qc_columns:
        keep = ~_qc_mask(cells, qc_columns)
        cells = cells.loc[keep]
        feats = [f for f in feats if f not in qc_columns]
    if len(cells) == 0:
        raise ValueError("aggregate: no cells left to aggregate (all QC-flagged or empty table)")
    codes, keys = _group_codes(cells, strata)
    n_groups = len(keys)
    x = cells[feats].to_numpy()
    values, counts = _group_reduce(x, codes, n_groups, method)
    meta = _constant_metadata(cells, codes, n_groups, exclude=strata + list(qc_columns))
    parts = [keys.reset_index(drop=True), meta]
    if count_feature is not None:
        parts.append(pd.DataFrame({count_feature: counts.astype(np.int64)}))
    parts.append(pd.DataFrame(values, columns=feats))
    return pd.concat(parts, axis=1)


def _parquet_feature_columns(schema: Any) -> list[str]:
    import pyarrow as pa

    out = []
    for field in schema:
        if field.name.startswith(METADATA_PREFIX) or field.name.startswith("__"):
            continue  # metadata, or a stored pandas index
        t = field.type
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            out.append(field.name)
    return out


def aggregate_files(
    paths: Sequence[str | os.PathLike[str]],
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    method: str = "median",
    qc_columns: Sequence[str] = (),
    count_feature: str | None = COUNT_FEATURE,
) -> pd.DataFrame:
    """Aggregate per-cell Parquet files (e.g. the shards of one plate), one file at a time.

    Every group (well) must lie within one file, as the shards of a plate hold disjoint sets of
    wells; memory is bounded by the largest file. Files with no rows are skipped.

    Parameters
    ----------
    paths : sequence of path
        Per-cell tables with the same feature columns.
    strata, method, qc_columns, count_feature
        As for :func:`aggregate`.

    Returns
    -------
    DataFrame
        One row per group, sorted by ``strata``.
    """
    if not paths:
        raise ValueError("aggregate_files: no per-cell tables given")
    parts = []
    seen: dict[tuple, str] = {}
    ref_features: list[str] | None = None
    for path in paths:
        schema = pq.read_schema(path)
        feats = _parquet_feature_columns(schema)
        if ref_features is None:
            ref_features = feats
        elif set(feats) != set(ref_features):
            diff = sorted(set(feats) ^ set(ref_features))[:5]
            raise ValueError(
                f"per-cell table {path} has different feature columns than {paths[0]}: {diff}"
            )
        cells = pq.read_table(path).to_pandas()
        if len(cells) == 0:
            continue
        try:
            prof = aggregate(
                cells,
                strata=strata,
                method=method,
                qc_columns=qc_columns,
                features=[f for f in ref_features if f not in qc_columns],
                count_feature=count_feature,
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        del cells
        for key in prof[list(strata)].itertuples(index=False, name=None):
            if key in seen:
                raise ValueError(
                    f"group {dict(zip(strata, key, strict=True))} appears in both {seen[key]} "
                    f"and {path}; a well must lie within one shard"
                )
            seen[key] = str(path)
        parts.append(prof)
    if not parts:
        raise ValueError(f"aggregate_files: the tables {list(map(str, paths))} hold no cells")
    out = pd.concat(parts, ignore_index=True)
    # metadata constant within every file but not across all files keeps its values; a column
    # dropped in one file (varying within a well there) is dropped everywhere
    common = [c for c in out.columns if all(c in p.columns for p in parts)]
    out = out[common]
    return out.sort_values(list(strata), kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# normalization


def _control_mask(profiles: pd.DataFrame, control: Mapping[str, Any] | None) -> np.ndarray:
    if control is None:
        return np.ones(len(profiles), dtype=bool)
    _require_columns(profiles, control.keys(), "normalize: control")
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
    out = profiles.copy()
    if method == "none":
        return out
    feats = _resolve_features(profiles, features, "normalize")
    ctrl = _control_mask(profiles, control)
    x = _as_float64(profiles, feats)
    if by is None:
        codes = np.zeros(len(profiles), dtype=np.int64)
        keys = pd.DataFrame({"all rows": ["all"]})
    else:
        by_list = [by] if isinstance(by, str) else list(by)
        _require_columns(profiles, by_list, "normalize: by")
        codes, keys = _group_codes(profiles, by_list)
    result = np.empty_like(x)
    import warnings

    for g in range(len(keys)):
        rows = np.flatnonzero(codes == g)
        fit_rows = rows[ctrl[rows]]
        if fit_rows.size == 0:
            key = keys.iloc[g].to_dict()
            raise ValueError(f"normalize: no control rows {dict(control or {})} in group {key}")
        fit = x[fit_rows]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            if method == "mad_robustize":
                center = np.nanmedian(fit, axis=0)
                mad = np.nanmedian(np.abs(fit - center), axis=0) / (1 / 1.4826)
                scale = mad + epsilon
            else:
                n_ok = (~np.isnan(fit)).sum(axis=0)
                center = np.nanmean(fit, axis=0)
                var = np.nanvar(fit, axis=0)
                scale = np.sqrt(var)
                scale = np.where(_constant_feature(var, center, n_ok), 1.0, scale)
            result[rows] = (x[rows] - center) / scale
    out[feats] = pd.DataFrame(result, columns=feats, index=out.index)
    return out


# ----------------------------------------------------------------------------------------------
# feature selection


def _corr_matrix(x: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Pearson correlation between the columns of ``x``, pairwise-complete where NaN occur.

    Equals ``numpy.corrcoef`` without NaN and ``pandas.DataFrame.corr`` with NaN (each pair
    uses the rows where both features are present). Computed in float64 in row chunks.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)

    Returns
    -------
    ndarray of shape (n_features, n_features); NaN where a feature is constant.
    """
    n, p = x.shape
    nan_cols = np.flatnonzero(np.isnan(x).any(axis=0))
    with np.errstate(all="ignore"):
        shift = np.nanmean(x, axis=0) if n else np.zeros(p)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    if nan_cols.size == 0:
        cross = np.zeros((p, p))
        for s in range(0, n, chunk):
            b = np.asarray(x[s : s + chunk], dtype=np.float64) - shift
            cross += b.T @ b
        total = np.zeros(p)
        for s in range(0, n, chunk):
            total += (np.asarray(x[s : s + chunk], dtype=np.float64) - shift).sum(axis=0)
        cov = cross - np.outer(total, total) / n
        d = np.sqrt(np.diag(cov))
        with np.errstate(all="ignore"):
            c = cov / np.outer(d, d)
        zero = d == 0
        c[zero, :] = np.nan
        c[:, zero] = np.nan
        return c
    # pairwise-complete: sums restricted to rows where both columns are present
    m_sum = np.zeros((p, p))  # n_ij
    s_x = np.zeros((p, p))  # sum over common rows of x_i  (row i, column j)
    s_xx = np.zeros((p, p))  # sum over common rows of x_i ** 2
    s_xy = np.zeros((p, p))
    for s in range(0, n, chunk):
        b = np.asarray(x[s : s + chunk], dtype=np.float64) - shift
        ok = ~np.isnan(b)
        m = ok.astype(np.float64)
        b0 = np.where(ok, b, 0.0)
        m_sum += m.T @ m
        s_x += b0.T @ m
        s_xx += (b0 * b0).T @ m
        s_xy += b0.T @ b0
    with np.errstate(all="ignore"):
        cov = s_xy - s_x * s_x.T / m_sum
        var_i = s_xx - s_x * s_x / m_sum
        var_j = var_i.T
        c = cov / np.sqrt(var_i * var_j)
    bad = (m_sum < 1) | (var_i <= 0) | (var_j <= 0) | ~np.isfinite(c)
    c[bad] = np.nan
    return np.clip(c, -1.0, 1.0)


def _exclude_variance(x: np.ndarray, min_variance: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            var = np.nanvar(x, axis=0)
            if min_variance == 0:
                ptp = np.nanmax(x, axis=0) - np.nanmin(x, axis=0)
                var = np.fmin(var, ptp)
    return ~(var > min_variance)


def _exclude_frequency(x: np.ndarray, freq_cut: float, unique_cut: float) -> np.ndarray:
    n, p = x.shape
    out = np.zeros(p, dtype=bool)
    for j in range(p):
        col = x[:, j]
        col = col[~np.isnan(col)]
        _, counts = np.unique(col, return_counts=True)
        if counts.size < 2:
            out[j] = True
            continue
        top = np.sort(counts)[::-1]
        if top[1] / top[0] < freq_cut or counts.size / n < unique_cut:
            out[j] = True
    return out


def _exclude_correlation(x: np.ndarray, threshold: float) -> np.ndarray:
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


def feature_select_excluded(
    profiles: pd.DataFrame,
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    features: Sequence[str] | None = None,
    corr_threshold: float = 0.9,
    na_cutoff: float = 0.05,
    min_variance: float = 1e-6,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    blocklist: Sequence[str] = DEFAULT_BLOCKLIST,
) -> dict[str, list[str]]:
    """Features each selection operation excludes, in the order the operations run.

    See :func:`feature_select` for the parameters. Returns an ordered mapping
    ``operation -> excluded features`` (in table order); each operation sees only the
    features left by the operations before it.
    """
    feats = _resolve_features(profiles, features, "feature_select")
    if not 0 <= corr_threshold <= 1:
        raise ValueError(f"corr_threshold must be in [0, 1], got {corr_threshold}")
    if not 0 <= na_cutoff <= 1:
        raise ValueError(f"na_cutoff must be in [0, 1], got {na_cutoff}")
    if not 0 <= freq_cut <= 1 or not 0 <= unique_cut <= 1:
        raise ValueError("freq_cut and unique_cut must be in [0, 1]")
    if min_variance < 0:
        raise ValueError(f"min_variance must be >= 0, got {min_variance}")
    ops = []
    for op in operations:
        if op not in _OPERATION_ALIASES:
            raise ValueError(
                f"unknown feature-selection operation {op!r}; choose from "
                f"{sorted(set(_OPERATION_ALIASES.values()))}"
            )
        ops.append(_OPERATION_ALIASES[op])
    patterns = [re.compile(p) for p in blocklist]
    remaining = list(feats)
    excluded: dict[str, list[str]] = {}
    for op in ops:
        if op == "blocklist":
            drop = {f for f in remaining if any(p.fullmatch(f) for p in patterns)}
        elif not remaining:
            drop = set()
        else:
            x = profiles[remaining].to_numpy(dtype=np.float64, na_value=np.nan)
            if op == "na":
                mask = np.isnan(x).sum(axis=0) / x.shape[0] > na_cutoff
            elif op == "variance":
                mask = _exclude_variance(x, min_variance)
            elif op == "frequency":
                mask = _exclude_frequency(x, freq_cut, unique_cut)
            else:
                mask = _exclude_correlation(x, corr_threshold)
            del x
            drop = {f for f, m in zip(remaining, mask, strict=True) if m}
        excluded[op] = [f for f in remaining if f in drop]
        remaining = [f for f in remaining if f not in drop]
    return excluded


def feature_select(
    profiles: pd.DataFrame,
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    features: Sequence[str] | None = None,
    corr_threshold: float = 0.9,
    na_cutoff: float = 0.05,
    min_variance: float = 1e-6,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    blocklist: Sequence[str] = DEFAULT_BLOCKLIST,
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
    ``correlation``
        Pearson correlation between features (pairwise-complete when values are missing).
        Features are ranked by the sum of their absolute correlations with all features; for
        every pair correlated above ``corr_threshold`` (positive correlation, as in
        pycytominer) the member with the larger sum is dropped. Ties in that sum are broken by
        table order.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
    operations : sequence of str
        Any of ``blocklist``, ``na``, ``variance``, ``frequency``, ``correlation`` (the
        pycytominer names ``drop_na_columns``, ``variance_threshold``, ... are accepted too).
    features : sequence of str, optional
        Feature columns; by default every numeric non-``Metadata_*`` column.
    corr_threshold, na_cutoff, min_variance, freq_cut, unique_cut : float
    blocklist : sequence of str
        Regular expressions matched against whole feature names.

    Returns
    -------
    DataFrame with the excluded feature columns removed (other columns unchanged).
    """
    excluded = feature_select_excluded(
        profiles,
        operations=operations,
        features=features,
        corr_threshold=corr_threshold,
        na_cutoff=na_cutoff,
        min_variance=min_variance,
        freq_cut=freq_cut,
        unique_cut=unique_cut,
        blocklist=blocklist,
    )
    drop = {f for fs in excluded.values() for f in fs}
    return profiles[[c for c in profiles.columns if c not in drop]].copy()


# ----------------------------------------------------------------------------------------------
# sphering


def sphere(
    profiles: pd.DataFrame,
    control: Mapping[str, Any] | None = None,
    method: str = "ZCA",
    epsilon: float = 1e-6,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Whiten features with a sphering transform fitted on control rows.

    With ``C`` the covariance of the control rows (``method="ZCA"``) or their correlation
    matrix after standardizing with the controls' mean and standard deviation
    (``"ZCA-cor"``), ``C = V diag(l) V^T``, every row is mapped to
    ``(x - mean) V diag((l + epsilon) ** -1/2) V^T`` (Kessy et al. 2018). Eigenvalues beyond
    the rank of the controls (fewer control rows than features) are replaced by the smallest
    eigenvalue within the rank, so that no direction unseen in the controls is amplified
    without bound. Features must have no missing values.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
    control : mapping of column to value, optional
        Rows used to fit, e.g. ``{"Metadata_Role": "negcon"}``; None fits on all rows.
    method : {"ZCA", "ZCA-cor"}
    epsilon : float
        Added to the eigenvalues.
    features : sequence of str, optional

    Returns
    -------
    DataFrame of the same shape, features whitened (float64).
    """
    if method not in ("ZCA", "ZCA-cor"):
        raise ValueError(f"sphering method must be 'ZCA' or 'ZCA-cor', got {method!r}")
    if epsilon < 0:
        raise ValueError(f"sphering epsilon must be >= 0, got {epsilon}")
    feats = _resolve_features(profiles, features, "sphere")
    x = _as_float64(profiles, feats)
    nan_cols = [f for f, bad in zip(feats, np.isnan(x).any(axis=0), strict=True) if bad]
    if nan_cols:
        raise ValueError(
            f"sphere: features with missing values {nan_cols[:5]}; run feature selection "
            "with the 'na' operation (and impute) first"
        )
    ctrl = _control_mask(profiles, control)
    fit = x[ctrl]
    if fit.shape[0] < 2:
        raise ValueError(f"sphere: need at least 2 control rows {dict(control or {})}")
    mean = fit.mean(axis=0)
    scale = np.ones(len(feats))
    if method == "ZCA-cor":
        scale = fit.std(axis=0)
        zero = [f for f, s in zip(feats, scale, strict=True) if s == 0]
        if zero:
            raise ValueError(f"sphere: features constant among the controls: {zero[:5]}")
    z = (fit - mean) / scale
    cov = z.T @ z / (z.shape[0] - 1)
    evals, evecs = np.linalg.eigh(cov)
    evals = evals[::-1]
    evecs = evecs[:, ::-1]
    tol = evals[0] * max(cov.shape) * np.finfo(np.float64).eps if evals[0] > 0 else 0.0
    rank = int((evals > tol).sum())
    if rank == 0:
        raise ValueError("sphere: the control rows have zero covariance")
    evals = np.where(np.arange(evals.size) < rank, evals, evals[rank - 1])
    # fix eigenvector signs so that the result does not depend on the LAPACK build
    signs = np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(evecs.shape[1])])
    evecs = evecs * np.where(signs == 0, 1.0, signs)
    w = (evecs / np.sqrt(evals + epsilon)) @ evecs.T
    out = profiles.copy()
    out[feats] = pd.DataFrame(((x - mean) / scale) @ w, columns=feats, index=out.index)
    return out


# ----------------------------------------------------------------------------------------------
# Harmony


def _pca(x: np.ndarray, n_components: int) -> np.ndarray:
    """Principal-component scores of ``x`` (n, p) -> (n, n_components), deterministic signs."""
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(n_components, s.size)
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    signs = np.where(signs == 0, 1.0, signs)
    return u[:, :k] * s[:k] * signs


def _l2_rows(a: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _kmeans_cosine(z: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 25) -> np.ndarray:
    """Spherical k-means (k-means++ seeding) on unit rows; returns unit centroids (k, d)."""
    n = z.shape[0]
    centers = np.empty((k, z.shape[1]))
    centers[0] = z[rng.integers(n)]
    d2 = np.sum((z - centers[0]) ** 2, axis=1)
    for i in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[i] = z[idx]
        d2 = np.minimum(d2, np.sum((z - centers[i]) ** 2, axis=1))
    for _ in range(n_iter):
        assign = np.argmax(z @ centers.T, axis=1)
        new = np.zeros_like(centers)
        np.add.at(new, assign, z)
        empty = np.bincount(assign, minlength=k) == 0
        new[empty] = centers[empty]
        new = _l2_rows(new)
        if np.allclose(new, centers):
            centers = new
            break
        centers = new
    return centers


def harmony_embedding(
    z: np.ndarray,
    batches: np.ndarray,
    theta: float = 2.0,
    sigma: float = 0.1,
    lamb: float = 1.0,
    n_clusters: int | None = None,
    max_iter: int = 10,
    max_iter_cluster: int = 20,
    tol_harmony: float = 1e-4,
    tol_cluster: float = 1e-5,
    block_size: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Harmony integration of an embedding (Korsunsky et al. 2019, Nat Methods 16:1289).

    Alternates (1) soft k-means clustering of the cosine-normalized embedding with a penalty
    that favours clusters mixing the batches in their overall proportions, and (2) a
    mixture-of-experts ridge regression per cluster that removes each batch's offset from the
    cells (rows) in proportion to their membership of that cluster.

    Parameters
    ----------
    z : ndarray of shape (n, d)
        Embedding (typically principal components).
    batches : ndarray of shape (n,)
        Batch label of each row.
    theta : float
        Diversity penalty (0 = plain soft k-means, no correction pressure).
    sigma : float
        Width of the soft clustering (entropy weight).
    lamb : float
        Ridge penalty on the batch coefficients.
    n_clusters : int, optional
        Number of clusters; default ``min(100, max(2, round(n / 30)))``.
    max_iter, max_iter_cluster : int
        Outer rounds and clustering iterations per round.
    tol_harmony, tol_cluster : float
        Relative objective change that stops the outer loop and the clustering loop.
    block_size : float
        Fraction of rows whose memberships are updated together.
    seed : int
        Seed of the k-means initialisation and of the block order.

    Returns
    -------
    ndarray of shape (n, d): the corrected embedding.
    """
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    labels, batch_idx = np.unique(np.asarray(batches), return_inverse=True)
    n_b = labels.size
    if n_b < 2:
        return z.copy()
    k = n_clusters if n_clusters is not None else int(min(100, max(2, round(n / 30))))
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    phi = np.zeros((n, n_b))
    phi[np.arange(n), batch_idx] = 1.0
    pr_b = phi.sum(axis=0) / n
    theta_b = np.full(n_b, float(theta))

    z_corr = z.copy()
    z_cos = _l2_rows(z_corr)
    y = _kmeans_cosine(z_cos, k, rng)

    def memberships(dist: np.ndarray) -> np.ndarray:
        r = -dist / sigma
        r -= r.max(axis=1, keepdims=True)
        r = np.exp(r)
        return r / r.sum(axis=1, keepdims=True)

    dist = 2.0 * (1.0 - z_cos @ y.T)
    r = memberships(dist)
    e = np.outer(r.sum(axis=0), pr_b)  # (k, B) expected
    o = r.T @ phi  # (k, B) observed

    def objective(r: np.ndarray, dist: np.ndarray, o: np.ndarray, e: np.ndarray) -> float:
        kmeans = float(np.sum(r * dist))
        entropy = float(sigma * np.sum(r * np.log(r + 1e-300)))
        diversity = float(sigma * np.sum(theta_b[None, :] * o * np.log((o + 1) / (e + 1))))
        return kmeans + entropy + diversity

    prev_harmony = objective(r, dist, o, e)
    n_block = max(1, int(np.ceil(n * block_size)))
    for _ in range(max_iter):
        # (1) clustering with the diversity penalty
        prev = objective(r, dist, o, e)
        for _ in range(max_iter_cluster):
            y = _l2_rows(r.T @ z_cos)
            dist = 2.0 * (1.0 - z_cos @ y.T)
            order = rng.permutation(n)
            for s in range(0, n, n_block):
                rows = order[s : s + n_block]
                e -= np.outer(r[rows].sum(axis=0), pr_b)
                o -= r[rows].T @ phi[rows]
                rb = memberships(dist[rows])
                penalty = ((e + 1.0) / (o + 1.0)) ** theta_b[None, :]  # (k, B)
                rb = rb * penalty[:, batch_idx[rows]].T
                rb /= rb.sum(axis=1, keepdims=True)
                r[rows] = rb
                e += np.outer(rb.sum(axis=0), pr_b)
                o += rb.T @ phi[rows]
            cur = objective(r, dist, o, e)
            if abs(prev - cur) <= tol_cluster * abs(prev):
                break
            prev = cur
        # (2) mixture-of-experts ridge correction
        design = np.hstack([np.ones((n, 1)), phi])  # (n, 1 + B)
        ridge = np.diag(np.concatenate([[0.0], np.full(n_b, float(lamb))]))
        z_corr = z.copy()
        for c in range(k):
            w_c = r[:, c]
            a = (design * w_c[:, None]).T @ design + ridge
            beta = np.linalg.solve(a, (design * w_c[:, None]).T @ z)  # (1 + B, d)
            beta[0] = 0.0  # keep the intercept (the cluster's own position)
            z_corr -= w_c[:, None] * (design @ beta)
        z_cos = _l2_rows(z_corr)
        dist = 2.0 * (1.0 - z_cos @ y.T)
        cur_harmony = objective(r, dist, o, e)
        if abs(prev_harmony - cur_harmony) <= tol_harmony * abs(prev_harmony):
            break
        prev_harmony = cur_harmony
    return z_corr


def harmony(
    profiles: pd.DataFrame,
    batch_col: str = "Metadata_Batch",
    n_components: int | None = 50,
    theta: float = 2.0,
    sigma: float = 0.1,
    lamb: float = 1.0,
    n_clusters: int | None = None,
    max_iter: int = 10,
    seed: int = 0,
    features: Sequence[str] | None = None,
    prefix: str = "Harmony_PC",
) -> pd.DataFrame:
    """Correct batch effects with Harmony on the principal components of the profiles.

    The features are reduced to ``n_components`` principal components (centred, not scaled;
    signs fixed), which Harmony corrects across the groups of ``batch_col``. The result holds
    the metadata columns and the corrected components as features named
    ``{prefix}0001 ...`` (the original features are replaced). With a single batch the
    components are returned uncorrected.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
        Features without missing values.
    batch_col : str
        Column holding each row's batch.
    n_components : int or None
        Number of principal components (at most ``min(n_rows, n_features)``); None keeps all.
    theta, sigma, lamb, n_clusters, max_iter, seed
        See :func:`harmony_embedding`.
    features : sequence of str, optional
    prefix : str
        Prefix of the output feature names.

    Returns
    -------
    DataFrame of shape (n_rows, n_metadata + n_components)
    """
    _require_columns(profiles, [batch_col], "harmony: batch column (config campaign.harmony)")
    feats = _resolve_features(profiles, features, "harmony")
    x = _as_float64(profiles, feats)
    if np.isnan(x).any():
        bad = [f for f, b in zip(feats, np.isnan(x).any(axis=0), strict=True) if b]
        raise ValueError(f"harmony: features with missing values {bad[:5]}")
    if profiles[batch_col].isna().any():
        raise ValueError(f"harmony: column {batch_col!r} has missing values")
    k = min(x.shape) if n_components is None else min(int(n_components), *x.shape)
    if k < 1:
        raise ValueError(f"harmony: n_components must be >= 1, got {n_components}")
    pcs = _pca(x, k)
    corrected = harmony_embedding(
        pcs,
        profiles[batch_col].astype(str).to_numpy(),
        theta=theta,
        sigma=sigma,
        lamb=lamb,
        n_clusters=n_clusters,
        max_iter=max_iter,
        seed=seed,
    )
    meta = profiles[metadata_columns(profiles)].reset_index(drop=True)
    names = [f"{prefix}{i + 1:04d}" for i in range(corrected.shape[1])]
    out = pd.concat([meta, pd.DataFrame(corrected, columns=names)], axis=1)
    out.index = profiles.index
    return out


# ----------------------------------------------------------------------------------------------
# consensus


def consensus(
    profiles: pd.DataFrame,
    by: Sequence[str] = ("Metadata_Compound", "Metadata_Dose"),
    method: str = "median",
    features: Sequence[str] | None = None,
    replicate_column: str = "Metadata_Replicates",
) -> pd.DataFrame:
    """One consensus profile per treatment: the median (or mean) of its replicate wells.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
    by : sequence of str
        Columns identifying a treatment (compound and dose by default).
    method : {"median", "mean"}
    features : sequence of str, optional
    replicate_column : str
        Metadata column that receives the number of wells combined.

    Returns
    -------
    DataFrame of shape (n_treatments, ...)
        ``by``, the metadata constant within every treatment (role, MoA, target, ...), the
        replicate count and the consensus features, sorted by ``by``.
    """
    if method not in ("median", "mean"):
        raise ValueError(f"consensus method must be 'median' or 'mean', got {method!r}")
    by = list(by)
    _require_columns(profiles, by, "consensus")
    feats = _resolve_features(profiles, features, "consensus")
    feats = [f for f in feats if f not in by]
    codes, keys = _group_codes(profiles, by)
    values, counts = _group_reduce(profiles[feats].to_numpy(), codes, len(keys), method)
    meta = _constant_metadata(profiles, codes, len(keys), exclude=by + [replicate_column])
    return pd.concat(
        [
            keys.reset_index(drop=True),
            meta,
            pd.DataFrame({replicate_column: counts.astype(np.int64)}),
            pd.DataFrame(values, columns=feats),
        ],
        axis=1,
    )


# ----------------------------------------------------------------------------------------------
# external profile tables


def read_profiles_table(
    path: str | os.PathLike[str],
    columns: Mapping[str, str] | None = None,
    role_values: Mapping[str, str] | None = None,
    default_batch: str = "batch1",
) -> pd.DataFrame:
    """Read well-level profiles made elsewhere (CSV, CSV.gz or Parquet) into our columns.

    Metadata columns are renamed onto ours: ``Metadata_Plate``, ``Metadata_Well``,
    ``Metadata_Compound``, ``Metadata_Dose`` (numeric, µM), ``Metadata_Role`` (``negcon``,
    ``poscon``, ``trt``, ``empty``), and when present ``Metadata_MoA``, ``Metadata_Target``,
    ``Metadata_Batch``. For each, ``columns`` names the source column explicitly; otherwise
    the first present of :data:`DEFAULT_COLUMN_CANDIDATES` is used (e.g. LINCS/cytominer
    ``Metadata_broad_sample``, ``Metadata_mmoles_per_liter``, ``Metadata_pert_type``,
    ``Metadata_moa``). Role values are mapped with ``role_values`` (default
    :data:`DEFAULT_ROLE_VALUES`, e.g. ``control`` -> ``negcon``). Without a batch column every
    row gets ``default_batch``. Other columns are kept unchanged.

    Parameters
    ----------
    path : path
        ``.parquet``/``.pq`` or ``.csv``/``.csv.gz``/``.tsv``.
    columns : mapping of our column -> source column, optional
        Explicit column map (config key ``input_profiles_columns``).
    role_values : mapping of source value -> role, optional
    default_batch : str

    Returns
    -------
    DataFrame with one row per well.

    Raises
    ------
    ValueError
        Naming the file and the missing column, an unknown role value or a non-numeric dose.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input profiles {path} do not exist (config key input_profiles)")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pq.read_table(path).to_pandas()
        elif name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
            df = pd.read_csv(path, low_memory=False)
        elif name.endswith((".tsv", ".tsv.gz")):
            df = pd.read_csv(path, sep="\t", low_memory=False)
        else:
            raise ValueError("unsupported file type (use .parquet, .csv, .csv.gz or .tsv)")
    except ValueError as exc:
        raise ValueError(f"cannot read input profiles {path}: {exc}") from exc
    columns = {k: v for k, v in (columns or {}).items() if v is not None}
    unknown = [k for k in columns if k not in DEFAULT_COLUMN_CANDIDATES]
    if unknown:
        raise ValueError(
            f"input_profiles_columns: unknown target column(s) {unknown}; "
            f"choose from {list(DEFAULT_COLUMN_CANDIDATES)}"
        )
    rename: dict[str, str] = {}
    for ours, candidates in DEFAULT_COLUMN_CANDIDATES.items():
        if ours in columns:
            src = columns[ours]
            if src not in df.columns:
                raise ValueError(
                    f"input profiles {path}: column {src!r} (mapped to {ours} in "
                    f"input_profiles_columns) is not in the file"
                )
        else:
            src = next((c for c in candidates if c in df.columns), None)
            if src is None:
                if ours in REQUIRED_PROFILE_COLUMNS:
                    raise ValueError(
                        f"input profiles {path}: no column for {ours} (looked for "
                        f"{list(candidates)}); name it in config input_profiles_columns"
                    )
                continue
        if src != ours:
            rename[src] = ours
    out = df.copy()
    for src, ours in rename.items():
        # our name wins: a column already called e.g. Metadata_Compound is replaced
        out[ours] = df[src]
    ordered = list(dict.fromkeys([*REQUIRED_PROFILE_COLUMNS, *rename.values()]))
    out = out[
        [c for c in ordered if c in out.columns] + [c for c in out.columns if c not in ordered]
    ]
    # roles
    values = {str(k).lower(): v for k, v in (role_values or DEFAULT_ROLE_VALUES).items()}
    raw = out["Metadata_Role"].astype("string").str.strip().str.lower()
    mapped = raw.map(values)
    bad = sorted(
        set(raw[mapped.isna()].dropna().unique()) | ({"<missing>"} if raw.isna().any() else set())
    )
    if bad:
        raise ValueError(
            f"input profiles {path}: Metadata_Role values {bad[:5]} are not known roles; "
            f"known: {sorted(values)}"
        )
    out["Metadata_Role"] = mapped.astype(object)
    dose = pd.to_numeric(out["Metadata_Dose"], errors="coerce")
    if dose.isna().any():
        examples = out.loc[dose.isna(), "Metadata_Dose"].head(3).tolist()
        raise ValueError(f"input profiles {path}: Metadata_Dose has non-numeric values {examples}")
    out["Metadata_Dose"] = dose.astype(np.float64)
    out["Metadata_Compound"] = out["Metadata_Compound"].astype(str)
    if "Metadata_Batch" not in out.columns:
        out["Metadata_Batch"] = default_batch
    out["Metadata_Batch"] = out["Metadata_Batch"].astype(str)
    for key in ("Metadata_Plate", "Metadata_Well"):
        if out[key].isna().any():
            raise ValueError(f"input profiles {path}: {key} has missing values")
        out[key] = out[key].astype(str)
    dup = out.duplicated(["Metadata_Plate", "Metadata_Well"])
    if dup.any():
        first = out.loc[dup, ["Metadata_Plate", "Metadata_Well"]].iloc[0].to_dict()
        raise ValueError(f"input profiles {path}: well {first} appears more than once")
    if not feature_columns(out):
        raise ValueError(f"input profiles {path}: no numeric feature columns")
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# the workflow's two steps


def plate_profiles(
    cell_tables: Sequence[str | os.PathLike[str]],
    aggregation: str = "median",
    normalization: str = "mad_robustize",
    control_role: str = "negcon",
    mad_epsilon: float = 1e-18,
    qc_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Well profiles of one plate from its per-shard cell tables (config section ``profiles``).

    Aggregates the cells of each well (:func:`aggregate_files`, one file at a time), then
    normalizes against the plate's ``control_role`` wells (:func:`normalize`; ``"all"`` fits
    on every well).

    Returns
    -------
    DataFrame with one row per well, sorted by well.
    """
    prof = aggregate_files(cell_tables, method=aggregation, qc_columns=qc_columns)
    return normalize_plates(prof, normalization, control_role, mad_epsilon)


def normalize_plates(
    profiles: pd.DataFrame,
    normalization: str = "mad_robustize",
    control_role: str = "negcon",
    mad_epsilon: float = 1e-18,
) -> pd.DataFrame:
    """:func:`normalize` within each plate against the wells whose role is ``control_role``."""
    control = None if control_role == "all" else {"Metadata_Role": control_role}
    return normalize(
        profiles, method=normalization, control=control, by="Metadata_Plate", epsilon=mad_epsilon
    )


def campaign_profiles(
    profiles: pd.DataFrame, campaign: Mapping[str, Any], control_role: str = "negcon"
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Feature selection, optional sphering and Harmony, and consensus over a campaign.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
        Normalized well profiles of all plates.
    campaign : mapping
        The validated config section ``campaign`` (``feature_select``, ``sphering``,
        ``harmony``, ``consensus``).
    control_role : str
        Role of the wells the sphering is fitted on.

    Returns
    -------
    profiles : DataFrame
        Well profiles after the campaign steps, sorted by plate and well.
    consensus : DataFrame
        One row per compound x dose.
    steps : dict
        What was done (for provenance): the steps in order and the excluded features.
    """
    fs = campaign["feature_select"]
    steps: list[str] = []
    n_in = len(feature_columns(profiles))
    excluded = feature_select_excluded(
        profiles,
        operations=fs["operations"],
        corr_threshold=fs["corr_threshold"],
        na_cutoff=fs["na_cutoff"],
        min_variance=fs["min_variance"],
        freq_cut=fs["freq_cut"],
        unique_cut=fs["unique_cut"],
        blocklist=fs["blocklist"],
    )
    drop = {f for fs_ in excluded.values() for f in fs_}
    out = profiles[[c for c in profiles.columns if c not in drop]]
    if not feature_columns(out):
        raise ValueError(
            "feature selection (config campaign.feature_select) removed every feature: "
            + ", ".join(f"{op} {len(v)}" for op, v in excluded.items())
        )
    steps.append("feature_select(" + ",".join(fs["operations"]) + ")")
    sph = campaign["sphering"]
    har = campaign["harmony"]
    if sph["enabled"] or har["enabled"]:
        # sphering and Harmony need complete features: drop those still missing somewhere
        feats = feature_columns(out)
        missing = [f for f, m in zip(feats, out[feats].isna().any().to_numpy(), strict=True) if m]
        if missing:
            excluded["incomplete"] = missing
            out = out.drop(columns=missing)
            steps.append(f"drop_incomplete({len(missing)})")
    if sph["enabled"]:
        control = None if control_role == "all" else {"Metadata_Role": control_role}
        out = sphere(out, control=control, method=sph["method"], epsilon=sph["epsilon"])
        steps.append(f"sphere({sph['method']}, epsilon={sph['epsilon']})")
    if har["enabled"]:
        out = harmony(
            out,
            batch_col="Metadata_Batch",
            n_components=har["n_components"],
            theta=har["theta"],
            sigma=har["sigma"],
            lamb=har["lambda"],
            n_clusters=har["n_clusters"],
            max_iter=har["max_iter"],
            seed=har["seed"],
        )
        steps.append(f"harmony(batch=Metadata_Batch, n_components={har['n_components']})")
    out = out.sort_values(["Metadata_Plate", "Metadata_Well"], kind="stable").reset_index(drop=True)
    cons = consensus(out, method=campaign["consensus"])
    steps.append(f"consensus({campaign['consensus']} by Metadata_Compound, Metadata_Dose)")
    info = {
        "steps": steps,
        "n_features_in": n_in,
        "n_features_out": len(feature_columns(out)),
        "excluded_features": excluded,
    }
    return out, cons, info
