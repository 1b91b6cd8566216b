"""Column conventions of profile tables: ``Metadata_*`` metadata and numeric features.

Every table of the profile-level stages (cells, well profiles, consensus profiles, analysis
results) follows pycytominer's convention: a column whose name starts with ``Metadata_`` is
metadata, every other numeric (not boolean) column is a feature. The names of the metadata
columns the workflow writes are defined here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

METADATA_PREFIX = "Metadata_"

PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
SITE = "Metadata_Site"
COMPOUND = "Metadata_Compound"
DOSE = "Metadata_Dose"
ROLE = "Metadata_Role"
MOA = "Metadata_MoA"
TARGET = "Metadata_Target"
BATCH = "Metadata_Batch"
#: Plate-map role of negative-control wells.
NEGCON = "negcon"


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Names of the metadata columns (prefix ``Metadata_``), in table order."""
    return [c for c in df.columns if str(c).startswith(METADATA_PREFIX)]


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Names of the feature columns: numeric (not boolean) and not ``Metadata_*``."""
    # from the dtypes: selecting each column of a wide table costs more than the test
    return [
        c
        for c, dt in df.dtypes.items()
        if not str(c).startswith(METADATA_PREFIX)
        and pd.api.types.is_numeric_dtype(dt)
        and not pd.api.types.is_bool_dtype(dt)
    ]


def resolve_features(df: pd.DataFrame, features: Sequence[str] | None, what: str) -> list[str]:
    """The feature columns to work on: ``features`` checked against ``df``, or all of them.

    Raises
    ------
    ValueError
        Naming ``what`` when a column is missing or not numeric, or there is no feature.
    """
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


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless every one of ``columns`` is in ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: column(s) {missing} not in the table (it has {len(df.columns)} columns, "
            f"metadata: {metadata_columns(df)[:12]})"
        )


def as_float64(df: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Features as a C-contiguous float64 array of shape (n_rows, n_features)."""
    return np.ascontiguousarray(df[list(features)].to_numpy(dtype=np.float64, na_value=np.nan))


def column_float64(df: pd.DataFrame, name: str) -> np.ndarray:
    """One column as a float64 array (NaN for missing values); a read-only view if possible."""
    col = df[name]
    if col.dtype == np.float64:
        return col.to_numpy()
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def iter_columns(
    df: pd.DataFrame, names: Sequence[str], chunk_bytes: int = 1 << 25
) -> Iterator[np.ndarray]:
    """Yield the columns ``names`` of ``df`` in order as float64 arrays (NaN for missing).

    Selecting one column of a DataFrame costs about 0.1 ms in pandas, which dominates on
    well-profile tables (few rows, hundreds of features): those are taken out in groups of at
    most ``chunk_bytes`` (one 2-D copy per group, whose rows are yielded). Tables with many
    rows (single cells) yield each column on its own, a view where possible (no copy).
    """
    names = list(names)
    if len(df) >= 1 << 16:
        for name in names:
            yield column_float64(df, name)
        return
    per = max(1, chunk_bytes // max(8 * len(df), 1))
    for a in range(0, len(names), per):
        block = df[names[a : a + per]].to_numpy(dtype=np.float64, na_value=np.nan).T
        yield from block
        del block


def parquet_feature_columns(schema: Any) -> list[str]:
    """Names of the numeric (integer or float) non-``Metadata_*`` columns of an Arrow schema:
    the feature columns of a Parquet file, read without its data."""
    import pyarrow as pa

    out = []
    for field in schema:
        if field.name.startswith(METADATA_PREFIX) or field.name.startswith("__"):
            continue  # metadata, or a stored pandas index
        t = field.type
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            out.append(field.name)
    return out


def arrow_float_column(col: Any) -> np.ndarray:
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
