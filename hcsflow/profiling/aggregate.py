"""Aggregation of single cells into well profiles, and the group kernels of the package.

:func:`aggregate` takes the median (or mean) of each feature over the cells of a well, NaN
skipped, as pycytominer's ``aggregate`` does; the number of cells of the well is added as the
feature ``Image_Count_Cells``. The median is computed by a compiled exact selection
(:mod:`hcsflow.profiling._groupstats`). :func:`aggregate_files` streams a plate's per-shard
cell tables one file at a time, so memory is bounded by the largest shard.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hcsflow.profiling.columns import (
    METADATA_PREFIX,
    arrow_float_column,
    metadata_columns,
    parquet_feature_columns,
    require_columns,
    resolve_features,
)
from hcsflow.profiling.dispersion import (
    dispersion_feature_names,
    group_dispersion,
    parse_statistics,
)

#: Name of the per-well cell-count feature added by :func:`aggregate`.
COUNT_FEATURE = "Image_Count_Cells"
#: Metadata of a single field or object (site, object number, per-cell flags such as
#: ``Metadata_Cells_NoNucleus``): never carried into an aggregated profile, even where it
#: happens to be constant within every group (one site per well, no flagged cell).
PER_OBJECT_METADATA = re.compile(
    r"Metadata_(Site|ObjectNumber|(Cells|Nuclei|Cytoplasm)_.+|Image_.+|Field.*)"
)


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
            from hcsflow.profiling._groupstats import group_median
        except ImportError:  # pragma: no cover - numba is a dependency of umap-learn
            group_median = None
        if group_median is not None:
            return group_median(x.T, order, bounds, threads=threads), np.diff(bounds)
    out = np.empty((n_groups, x.shape[1]), dtype=np.float64)
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
    require_columns(cells, qc_columns, "QC exclusion (config profiles.qc_columns)")
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
    dispersion: Sequence[str] = (),
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
    dispersion : sequence of str
        Per-group statistics added beside ``method`` for every feature (``"mad"``, ``"iqr"``,
        ``"std"``, ``"q10"``, ...; :mod:`hcsflow.profiling.dispersion`), as features named
        ``<feature>__<statistic>`` after the aggregated ones.

    Returns
    -------
    DataFrame of shape (n_groups, ...)
        The strata, the metadata columns constant within every group (except per-field and
        per-object ones, :data:`PER_OBJECT_METADATA`), the count feature, the aggregated
        features (float64) and the dispersion features.
    """
    if method not in ("median", "mean"):
        raise ValueError(f"aggregation method must be 'median' or 'mean', got {method!r}")
    parse_statistics(dispersion)
    strata = list(strata)
    require_columns(cells, strata, "aggregate: strata")
    feats = resolve_features(cells, features, "aggregate")
    feats = [f for f in feats if f not in strata and f != count_feature]
    if qc_columns:
        feats = [f for f in feats if f not in qc_columns]
    require_columns(cells, qc_columns, "QC exclusion (config profiles.qc_columns)")
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
        dispersion,
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
    dispersion: Sequence[str] = (),
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
    order, bounds = _group_slices(codes, n_groups)
    if method == "median":
        from hcsflow.profiling._groupstats import group_median_columns

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
    if dispersion:
        spread = group_dispersion(columns, order, bounds, dispersion)
        names = dispersion_feature_names(feats, dispersion)
        parts.append(pd.DataFrame(spread, columns=names, copy=False))
    return pd.concat(parts, axis=1)


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
    dispersion: Sequence[str] = (),
    cell_transform: Callable[[list[np.ndarray], list[str]], tuple[list[np.ndarray], list[str]]]
    | None = None,
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
    strata, method, qc_columns, count_feature, threads, dispersion
        As for :func:`aggregate`.
    cell_transform : callable, optional
        Applied to each file's cells before aggregation: takes one array (n_cells,) per
        feature and the feature names, returns new arrays and names (e.g. the components of
        :func:`hcsflow.profiling.cellspace.project_columns`).

    Returns
    -------
    DataFrame
        One row per group, sorted by ``strata``.
    """
    if not paths:
        raise ValueError("aggregate_files: no per-cell tables given")
    parse_statistics(dispersion)
    strata = list(strata)
    parts = []
    seen: dict[tuple, str] = {}
    ref_features: list[str] | None = None
    for path, table in _read_tables(paths, prefetch=threads > 1):
        feats = parquet_feature_columns(table.schema)
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
            require_columns(meta, strata, "aggregate: strata")
            # one array per feature: a view of the Arrow buffer when the column is one chunk
            # without nulls (no copy), else a float array with NaN for nulls
            columns = [arrow_float_column(table.column(f)) for f in ref_features]
            names = ref_features
            if cell_transform is not None:
                columns, names = cell_transform(columns, ref_features)
            prof = _aggregate_arrays(
                meta,
                columns,
                names,
                strata,
                method,
                qc_columns,
                count_feature,
                threads,
                dispersion,
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
