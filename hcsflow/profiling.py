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
  uniqueness ratios), ``na`` (``drop_na_columns``), ``outlier`` (``drop_outliers``),
  ``correlation`` (``correlation_threshold``) and ``blocklist``.

The median is computed by a compiled exact selection (:mod:`hcsflow._groupstats`) and feature
statistics column by column or in row chunks, so that no operation copies a large table whole.

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
#: Metadata of a single field or object (site, object number, per-cell flags such as
#: ``Metadata_Cells_NoNucleus``): never carried into an aggregated profile, even where it
#: happens to be constant within every group (one site per well, no flagged cell).
PER_OBJECT_METADATA = re.compile(
    r"Metadata_(Site|ObjectNumber|(Cells|Nuclei|Cytoplasm)_.+|Image_.+|Field.*)"
)

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
    """Group number of each row (groups sorted by key, missing values last) and the keys.

    Returns
    -------
    codes : ndarray of shape (n_rows,), int64
    keys : DataFrame of shape (n_groups, len(by))
    """
    by = list(by)
    combined = np.zeros(len(df), dtype=np.int64)
    uniques = []
    for c in by:
        codes_c, uniq = pd.factorize(df[c], sort=True, use_na_sentinel=False)
        combined = combined * max(len(uniq), 1) + codes_c
        uniques.append(uniq)
    present, codes = np.unique(combined, return_inverse=True)
    keys = {}
    rest = present
    for c, uniq in zip(reversed(by), reversed(uniques), strict=True):
        size = max(len(uniq), 1)
        keys[c] = pd.Series(uniq).take(rest % size).reset_index(drop=True)
        rest = rest // size
    keys_df = pd.DataFrame({c: keys[c] for c in by})
    for c in by:
        if keys_df[c].dtype != df[c].dtype:
            keys_df[c] = keys_df[c].astype(df[c].dtype)
    return codes.astype(np.int64), keys_df


def _group_slices(codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order that makes groups contiguous, and the start offset of each group (+ end)."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_groups)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return order, bounds


def _constant_metadata(
    df: pd.DataFrame, codes: np.ndarray, n_groups: int, exclude: Sequence[str]
) -> pd.DataFrame:
    """Metadata columns constant within every group, one row per group (NaN equals NaN).

    Per-field and per-object metadata (:data:`PER_OBJECT_METADATA`) is left out.
    """
    cols = [
        c for c in metadata_columns(df) if c not in exclude and not PER_OBJECT_METADATA.fullmatch(c)
    ]
    if not cols:
        return pd.DataFrame(index=range(n_groups))
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups))
    first_rows = order[starts]
    keep = {}
    for c in cols:
        values, _ = pd.factorize(df[c], use_na_sentinel=False)
        if np.array_equal(values, values[first_rows][codes]):
            keep[c] = df[c].iloc[first_rows].reset_index(drop=True)
    return pd.DataFrame(keep)


def _group_reduce(
    x: np.ndarray, codes: np.ndarray, n_groups: int, method: str, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Median or mean of each column of ``x`` within each group, NaN skipped.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)
        Any float dtype (reduced in float64), any memory layout.
    codes : ndarray of shape (n_rows,)
        Group number of each row in ``0 .. n_groups - 1``.
    threads : int
        Threads for the median kernel.

    Returns
    -------
    values : ndarray of shape (n_groups, n_features), float64
    counts : ndarray of shape (n_groups,), int64
    """
    order, bounds = _group_slices(codes, n_groups)
    if method == "median":
        try:
            from hcsflow._groupstats import group_median
        except ImportError:  # pragma: no cover - numba is a dependency of umap-learn
            group_median = None
        if group_median is not None:
            return group_median(x.T, order, bounds, threads=threads), np.diff(bounds)
    out = np.empty((n_groups, x.shape[1]), dtype=np.float64)
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for g in range(n_groups):
            block = np.asarray(x[order[bounds[g] : bounds[g + 1]]], dtype=np.float64)
            nan = np.isnan(block)
            if method == "median":
                out[g] = np.nanmedian(block, axis=0) if nan.any() else np.median(block, axis=0)
            elif nan.any():
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
    threads: int = 1,
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
    threads : int
        Threads for the median (the result does not depend on it).

    Returns
    -------
    DataFrame of shape (n_groups, ...)
        The strata, the metadata columns constant within every group (except per-field and
        per-object ones, :data:`PER_OBJECT_METADATA`), the count feature and the aggregated
        features (float64).
    """
    if method not in ("median", "mean"):
        raise ValueError(f"aggregation method must be 'median' or 'mean', got {method!r}")
    strata = list(strata)
    _require_columns(cells, strata, "aggregate: strata")
    feats = _resolve_features(cells, features, "aggregate")
    feats = [f for f in feats if f not in strata and f != count_feature]
    if qc_columns:
        feats = [f for f in feats if f not in qc_columns]
    _require_columns(cells, qc_columns, "QC exclusion (config profiles.qc_columns)")
    meta_cols = metadata_columns(cells)
    meta_cols += [c for c in qc_columns if c not in meta_cols]
    # one array per feature (views of the frame's columns where possible): the median kernel
    # reads one feature of a well at a time
    dtype = np.float32 if all(cells[f].dtype == np.float32 for f in feats) else np.float64
    columns = [cells[f].to_numpy(dtype=dtype, na_value=np.nan) for f in feats]
    return _aggregate_arrays(
        cells[meta_cols],
        columns,
        feats,
        strata,
        method,
        qc_columns,
        count_feature,
        threads,
    )


def _aggregate_arrays(
    meta: pd.DataFrame,
    columns: Sequence[np.ndarray],
    feats: list[str],
    strata: list[str],
    method: str,
    qc_columns: Sequence[str],
    count_feature: str | None,
    threads: int,
) -> pd.DataFrame:
    """:func:`aggregate` on metadata (n_rows, ...) and one array (n_rows,) per feature."""
    if qc_columns:
        keep = ~_qc_mask(meta, qc_columns)
        if not keep.all():
            meta = meta.loc[keep]
            columns = [c[keep] for c in columns]
    if len(meta) == 0:
        raise ValueError("aggregate: no cells left to aggregate (all QC-flagged or empty table)")
    codes, keys = _group_codes(meta, strata)
    n_groups = len(keys)
    if method == "median":
        from hcsflow._groupstats import group_median_columns

        order, bounds = _group_slices(codes, n_groups)
        # (n_features, n_groups): its transpose is the block layout pandas keeps, so the
        # frame below takes it without a copy
        values = group_median_columns(columns, order, bounds, threads=threads).T
        counts = np.diff(bounds)
    else:
        xt = np.stack([np.asarray(c, dtype=np.float64) for c in columns])
        values, counts = _group_reduce(xt.T, codes, n_groups, method, threads=threads)
    const = _constant_metadata(meta, codes, n_groups, exclude=strata + list(qc_columns))
    parts = [keys.reset_index(drop=True), const]
    if count_feature is not None:
        parts.append(pd.DataFrame({count_feature: counts.astype(np.int64)}))
    parts.append(pd.DataFrame(values, columns=feats, copy=False))
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


def _arrow_column(col: Any) -> np.ndarray:
    """A numeric Arrow column as a float array (float32 kept), NaN for nulls; no copy if possible."""
    import pyarrow as pa

    if col.num_chunks == 1:
        col = col.chunk(0)
    elif col.num_chunks == 0:
        return np.empty(0, dtype=np.float64)
    else:
        col = col.combine_chunks()
    if not pa.types.is_floating(col.type) or col.type == pa.float16():
        col = col.cast(pa.float64())
    if col.null_count:
        return col.to_numpy(zero_copy_only=False)  # nulls become NaN (a copy)
    return col.to_numpy(zero_copy_only=True)


def _read_tables(
    paths: Sequence[str | os.PathLike[str]], prefetch: bool
) -> Iterable[tuple[str | os.PathLike[str], Any]]:
    """Yield (path, Arrow table) for each file; with ``prefetch`` the next file is read in a
    background thread while the caller works on the current one (two tables in memory)."""
    if not prefetch or len(paths) < 2:
        for path in paths:
            yield path, pq.read_table(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(pq.read_table, paths[0])
        for i, path in enumerate(paths):
            table = pending.result()
            if i + 1 < len(paths):
                pending = pool.submit(pq.read_table, paths[i + 1])
            yield path, table
            del table


def aggregate_files(
    paths: Sequence[str | os.PathLike[str]],
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    method: str = "median",
    qc_columns: Sequence[str] = (),
    count_feature: str | None = COUNT_FEATURE,
    threads: int = 1,
) -> pd.DataFrame:
    """Aggregate per-cell Parquet files (e.g. the shards of one plate), one file at a time.

    Every group (well) must lie within one file, as the shards of a plate hold disjoint sets of
    wells; memory is bounded by the largest file. Feature columns are read from Arrow straight
    into one array per file (no DataFrame of the cells is built). Files with no rows are
    skipped.

    Parameters
    ----------
    paths : sequence of path
        Per-cell tables with the same feature columns.
    strata, method, qc_columns, count_feature, threads
        As for :func:`aggregate`.

    Returns
    -------
    DataFrame
        One row per group, sorted by ``strata``.
    """
    if not paths:
        raise ValueError("aggregate_files: no per-cell tables given")
    strata = list(strata)
    parts = []
    seen: dict[tuple, str] = {}
    ref_features: list[str] | None = None
    for path, table in _read_tables(paths, prefetch=threads > 1):
        feats = _parquet_feature_columns(table.schema)
        if ref_features is None:
            ref_features = [f for f in feats if f not in qc_columns and f != count_feature]
        elif set(feats) - set(qc_columns) - {count_feature} != set(ref_features):
            diff = sorted(set(feats) ^ set(ref_features))[:5]
            raise ValueError(
                f"per-cell table {path} has different feature columns than {paths[0]}: {diff}"
            )
        if table.num_rows == 0:
            continue
        names = table.column_names
        meta_cols = [c for c in names if c.startswith(METADATA_PREFIX) or c in qc_columns]
        meta = table.select(meta_cols).to_pandas()
        try:
            _require_columns(meta, strata, "aggregate: strata")
            # one array per feature: a view of the Arrow buffer when the column is one chunk
            # without nulls (no copy), else a float array with NaN for nulls
            columns = [_arrow_column(table.column(f)) for f in ref_features]
            prof = _aggregate_arrays(
                meta, columns, ref_features, strata, method, qc_columns, count_feature, threads
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        del table, columns
        for key in prof[strata].itertuples(index=False, name=None):
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
    # a metadata column dropped in one file (it varies within a well there) is dropped everywhere
    common = [c for c in out.columns if all(c in p.columns for p in parts)]
    out = out[common]
    return out.sort_values(strata, kind="stable").reset_index(drop=True)


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
    if method == "none":
        return profiles.copy()
    feats = _resolve_features(profiles, features, "normalize")
    ctrl = _control_mask(profiles, control)
    if by is None:
        codes = np.zeros(len(profiles), dtype=np.int64)
        keys = pd.DataFrame({"all rows": ["all"]})
    else:
        by_list = [by] if isinstance(by, str) else list(by)
        _require_columns(profiles, by_list, "normalize: by")
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
    for j, col in enumerate(_iter_columns(profiles, feats)):
        fit[j] = col[fit_rows]
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "mad_robustize":
            center = _group_reduce(fit.T, fit_codes, n_groups, "median")[0]  # (G, p)
            np.subtract(fit, center[fit_codes].T, out=fit)
            np.abs(fit, out=fit)
            mad = _group_reduce(fit.T, fit_codes, n_groups, "median")[0] / (1 / 1.4826)
            scale = mad + epsilon
        else:
            ok = ~np.isnan(fit)
            n_ok = np.stack([np.bincount(fit_codes, w, minlength=n_groups) for w in ok], axis=1)
            vals = np.where(ok, fit, 0.0)
            total = np.stack([np.bincount(fit_codes, w, minlength=n_groups) for w in vals], axis=1)
            center = total / n_ok
            dev = np.where(ok, fit - center[fit_codes].T, 0.0)
            var = (
                np.stack([np.bincount(fit_codes, w * w, minlength=n_groups) for w in dev], axis=1)
                / n_ok
            )
            scale = np.where(_constant_feature(var, center, n_ok), 1.0, np.sqrt(var))
        del fit
        # all rows: (n_features, n_rows), so that the frame below takes it without a copy
        result = np.empty((len(feats), len(profiles)), dtype=np.float64)
        contiguous = bool(np.all(codes[1:] >= codes[:-1]))  # rows already grouped in order
        bounds = np.searchsorted(codes, np.arange(n_groups + 1)) if contiguous else None
        for j, col in enumerate(_iter_columns(profiles, feats)):
            if contiguous:
                for g in range(n_groups):
                    a, b = bounds[g], bounds[g + 1]
                    np.subtract(col[a:b], center[g, j], out=result[j, a:b])
                    result[j, a:b] /= scale[g, j]
            else:
                result[j] = (col - center[codes, j]) / scale[codes, j]
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


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    """One column as a float64 array (NaN for missing values); a read-only view if possible."""
    col = df[name]
    if col.dtype == np.float64:
        return col.to_numpy()
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def _iter_columns(df: pd.DataFrame, names: Sequence[str], chunk_bytes: int = 1 << 25):
    """Yield the columns ``names`` of ``df`` in order as float64 arrays (NaN for missing).

    Selecting one column of a DataFrame costs about 0.1 ms in pandas, which dominates on
    well-profile tables (few rows, hundreds of features): those are taken out in groups of at
    most ``chunk_bytes`` (one 2-D copy per group, whose rows are yielded). Tables with many
    rows (single cells) yield each column on its own, a view where possible (no copy).
    """
    names = list(names)
    if len(df) >= 1 << 16:
        for name in names:
            yield _column(df, name)
        return
    per = max(1, chunk_bytes // max(8 * len(df), 1))
    for a in range(0, len(names), per):
        block = df[names[a : a + per]].to_numpy(dtype=np.float64, na_value=np.nan).T
        yield from block
        del block


class _Columns:
    """Some columns of a DataFrame, read in row chunks by :func:`_corr_matrix`."""

    def __init__(self, frame: pd.DataFrame, names: Sequence[str]) -> None:
        self.frame = frame
        self.names = list(names)


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
        arrays = list(_iter_columns(frame, names, chunk_bytes=1 << 27))

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
            import warnings

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
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, col in enumerate(_iter_columns(df, names)):
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
    for j, col in enumerate(_iter_columns(df, names)):
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
    outlier_cutoff: float = 500.0,
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
    if outlier_cutoff <= 0:
        raise ValueError(f"outlier_cutoff must be > 0, got {outlier_cutoff}")
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
            # column by column, or in row chunks: the table is never copied whole
            if op == "na":
                n = max(len(profiles), 1)
                mask = np.array(
                    [np.isnan(c).sum() / n > na_cutoff for c in _iter_columns(profiles, remaining)]
                )
            elif op == "variance":
                mask = _exclude_variance(profiles, remaining, min_variance)
            elif op == "frequency":
                mask = _exclude_frequency(profiles, remaining, freq_cut, unique_cut)
            elif op == "outlier":
                with np.errstate(invalid="ignore"):
                    mask = np.array(
                        [
                            bool(np.nanmax(np.abs(c), initial=0.0) > outlier_cutoff)
                            for c in _iter_columns(profiles, remaining)
                        ]
                    )
            else:
                mask = _exclude_correlation(_Columns(profiles, remaining), corr_threshold)
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
    outlier_cutoff: float = 500.0,
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
    operations : sequence of str
        Any of ``blocklist``, ``na``, ``variance``, ``frequency``, ``outlier``,
        ``correlation`` (the pycytominer names ``drop_na_columns``, ``variance_threshold``,
        ... are accepted too).
    features : sequence of str, optional
        Feature columns; by default every numeric non-``Metadata_*`` column.
    corr_threshold, na_cutoff, min_variance, freq_cut, unique_cut, outlier_cutoff : float
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
        outlier_cutoff=outlier_cutoff,
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
    shrinkage: float = 0.0,
) -> pd.DataFrame:
    """Whiten features with a sphering transform fitted on control rows.

    With ``C`` the covariance of the control rows (``method="ZCA"``) or their correlation
    matrix after standardizing with the controls' mean and standard deviation
    (``"ZCA-cor"``), shrunk towards a multiple of the identity,
    ``S = (1 - shrinkage) C + shrinkage (tr(C) / p) I = V diag(l) V^T``, every row is mapped
    to ``(x - mean) V diag((l + epsilon) ** -1/2) V^T`` (Kessy et al. 2018; shrinkage as
    Ledoit and Wolf 2004). Without shrinkage, eigenvalues beyond the rank of the controls
    (fewer control rows than features) are replaced by the smallest eigenvalue within the
    rank, so that no direction unseen in the controls is amplified without bound. With a few
    dozen control wells and hundreds of features the small eigenvalues of ``C`` are
    underestimated, and whitening them amplifies directions in which the controls happen to
    vary little; shrinkage bounds that amplification at ``1 / shrinkage`` of the mean
    variance. Features must have no missing values.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
    control : mapping of column to value, optional
        Rows used to fit, e.g. ``{"Metadata_Role": "negcon"}``; None fits on all rows.
    method : {"ZCA", "ZCA-cor"}
    epsilon : float
        Added to the eigenvalues.
    features : sequence of str, optional
    shrinkage : float
        Weight in [0, 1] of the scaled identity in the covariance (0: none; 1: no whitening,
        only centring and scaling).

    Returns
    -------
    DataFrame of the same shape, features whitened (float64).
    """
    if method not in ("ZCA", "ZCA-cor"):
        raise ValueError(f"sphering method must be 'ZCA' or 'ZCA-cor', got {method!r}")
    if epsilon < 0:
        raise ValueError(f"sphering epsilon must be >= 0, got {epsilon}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"sphering shrinkage must be in [0, 1], got {shrinkage}")
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
    if shrinkage > 0:
        cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / cov.shape[0]) * np.eye(
            cov.shape[0]
        )
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
    threads: int = 1,
) -> pd.DataFrame:
    """Well profiles of one plate from its per-shard cell tables (config section ``profiles``).

    Aggregates the cells of each well (:func:`aggregate_files`, one file at a time), then
    normalizes against the plate's ``control_role`` wells (:func:`normalize`; ``"all"`` fits
    on every well).

    Returns
    -------
    DataFrame with one row per well, sorted by well.
    """
    prof = aggregate_files(cell_tables, method=aggregation, qc_columns=qc_columns, threads=threads)
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
    """Optional plate-position correction, feature selection, optional sphering and Harmony,
    and consensus over a campaign.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
        Normalized well profiles of all plates.
    campaign : mapping
        The validated config section ``campaign`` (``position``, ``feature_select``,
        ``sphering``, ``harmony``, ``consensus``).
    control_role : str
        Role of the wells the sphering (and a ``negcon`` position fit) is fitted on.

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
    pos = campaign.get("position", {"enabled": False})
    position_info = None
    if pos["enabled"]:
        from hcsflow.position import correct_position

        profiles, position_info = correct_position(
            profiles,
            feature_columns(profiles),
            fit_on=pos["fit_on"],
            control=None if control_role == "all" else {"Metadata_Role": control_role},
            shrinkage=pos["shrinkage"],
        )
        steps.append(f"position(fit_on={pos['fit_on']})")
    excluded = feature_select_excluded(
        profiles,
        operations=fs["operations"],
        corr_threshold=fs["corr_threshold"],
        na_cutoff=fs["na_cutoff"],
        min_variance=fs["min_variance"],
        freq_cut=fs["freq_cut"],
        unique_cut=fs["unique_cut"],
        blocklist=fs["blocklist"],
        outlier_cutoff=fs["outlier_cutoff"],
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
    # sphering, Harmony and the distances of the analysis need complete features: drop those
    # still missing in some well (at most na_cutoff of the wells when 'na' ran)
    feats = feature_columns(out)
    missing = [f for f, m in zip(feats, out[feats].isna().any().to_numpy(), strict=True) if m]
    if missing:
        excluded["incomplete"] = missing
        out = out.drop(columns=missing)
        steps.append(f"drop_incomplete({len(missing)})")
        if not feature_columns(out):
            raise ValueError("campaign: every selected feature has missing values in some well")
    if sph["enabled"]:
        control = None if control_role == "all" else {"Metadata_Role": control_role}
        shrink = float(sph.get("shrinkage", 0.0))
        out = sphere(
            out, control=control, method=sph["method"], epsilon=sph["epsilon"], shrinkage=shrink
        )
        steps.append(f"sphere({sph['method']}, epsilon={sph['epsilon']}, shrinkage={shrink})")
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
    if position_info is not None:
        info["position"] = position_info
    return out, cons, info
