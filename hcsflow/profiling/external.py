"""Well-level profiles made elsewhere (CSV, CSV.gz or Parquet) read into the workflow's columns.

The workflow can start at the profile-level stages from a table such as a LINCS or JUMP
plate's profiles (config key ``input_profiles``); :func:`read_profiles_table` maps its
metadata columns and role values onto ours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hcsflow.profiling.columns import feature_columns

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
    df = _read_file(path)
    rename = _source_columns(df, path, columns)
    out = df.copy()
    for src, ours in rename.items():
        # our name wins: a column already called e.g. Metadata_Compound is replaced
        out[ours] = df[src]
    ordered = list(dict.fromkeys([*REQUIRED_PROFILE_COLUMNS, *rename.values()]))
    out = out[
        [c for c in ordered if c in out.columns] + [c for c in out.columns if c not in ordered]
    ]
    out["Metadata_Role"] = _map_roles(out["Metadata_Role"], path, role_values)
    return _typed_metadata(out, path, default_batch)


def _read_file(path: Path) -> pd.DataFrame:
    """The table at ``path`` by its suffix (Parquet, CSV or TSV, optionally gzipped)."""
    if not path.exists():
        raise ValueError(f"input profiles {path} do not exist (config key input_profiles)")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pq.read_table(path).to_pandas()
        if name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
            return pd.read_csv(path, low_memory=False)
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(path, sep="\t", low_memory=False)
        raise ValueError("unsupported file type (use .parquet, .csv, .csv.gz or .tsv)")
    except ValueError as exc:
        raise ValueError(f"cannot read input profiles {path}: {exc}") from exc


def _source_columns(
    df: pd.DataFrame, path: Path, columns: Mapping[str, str] | None
) -> dict[str, str]:
    """Source column -> our column, for each of ours found (explicitly or by candidates)."""
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
    return rename


def _map_roles(role: pd.Series, path: Path, role_values: Mapping[str, str] | None) -> pd.Series:
    """The role column mapped onto ``negcon``/``poscon``/``trt``/``empty``."""
    values = {str(k).lower(): v for k, v in (role_values or DEFAULT_ROLE_VALUES).items()}
    raw = role.astype("string").str.strip().str.lower()
    mapped = raw.map(values)
    bad = sorted(
        set(raw[mapped.isna()].dropna().unique()) | ({"<missing>"} if raw.isna().any() else set())
    )
    if bad:
        raise ValueError(
            f"input profiles {path}: Metadata_Role values {bad[:5]} are not known roles; "
            f"known: {sorted(values)}"
        )
    return mapped.astype(object)


def _typed_metadata(out: pd.DataFrame, path: Path, default_batch: str) -> pd.DataFrame:
    """Dose as float, names as str, a batch for every row; one row per plate x well."""
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
