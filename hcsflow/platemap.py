"""Plate maps: which treatment is in which well, and how wells are grouped into shards.

A plate map is a CSV with columns ``well`` (``A01`` or ``A1``), ``compound``, ``dose_um``,
``role`` (``negcon``, ``poscon``, ``trt``, ``empty``) and optional ``moa`` and ``target``. Any
other column is carried through as ``Metadata_<column>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from hcsflow.wells import normalize_well, well_sort_key

REQUIRED_COLUMNS = ("well", "compound", "dose_um", "role")
ROLES = ("negcon", "poscon", "trt", "empty")
#: plate-map column -> manifest column
STANDARD_COLUMNS = {
    "well": "Metadata_Well",
    "compound": "Metadata_Compound",
    "dose_um": "Metadata_Dose",
    "role": "Metadata_Role",
    "moa": "Metadata_MoA",
    "target": "Metadata_Target",
}


class PlatemapError(ValueError):
    """A plate map that cannot be used; the message names the file and the well or column."""


def read_platemap(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a plate map.

    Parameters
    ----------
    path : path
        CSV file.

    Returns
    -------
    DataFrame
        One row per well, sorted in plate order, columns renamed to the manifest's
        ``Metadata_*`` names (``Metadata_Well`` in ``A01`` form, ``Metadata_Dose`` float µM,
        ``Metadata_MoA`` and ``Metadata_Target`` always present, empty string when not given).

    Raises
    ------
    PlatemapError
        Missing file or column, a malformed well, an unknown role, a dose that is not a
        number, or a well listed twice; the message names the file and the wells.
    """
    path = Path(path)
    if not path.is_file():
        raise PlatemapError(f"plate map {path} does not exist")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise PlatemapError(f"plate map {path} cannot be read as CSV: {exc}") from exc
    df = validate_platemap(raw, f"plate map {path}")
    renamed = {c: STANDARD_COLUMNS.get(c, f"Metadata_{c}") for c in df.columns}
    df = df.rename(columns=renamed)
    order = sorted(range(len(df)), key=lambda i: well_sort_key(df["Metadata_Well"].iloc[i]))
    return df.iloc[order].reset_index(drop=True)


def validate_platemap(table: pd.DataFrame, source: str = "plate map") -> pd.DataFrame:
    """Check a plate map table and bring it to its canonical form.

    Parameters
    ----------
    table : DataFrame of shape (n_wells, n_columns)
        Columns ``well``, ``compound``, ``dose_um``, ``role`` (any case, surrounding blanks
        allowed) and optional ``moa``, ``target`` and others. Not modified.
    source : str
        What the table is, for messages (e.g. ``"plate map plates/P1.csv"``).

    Returns
    -------
    DataFrame
        A copy in the input's row order: the standard columns in lower case, text stripped,
        ``well`` in ``A01`` form, ``role`` in lower case, ``dose_um`` float µM (blank -> 0),
        ``moa`` and ``target`` always present (empty string when not given).

    Raises
    ------
    PlatemapError
        A missing column, a malformed well, an unknown role, a dose that is not a number, a
        compound missing from a non-empty well, or a well listed twice; the message starts
        with ``source`` and names the wells.
    """
    df = table.copy()
    df.columns = [str(c).strip() for c in df.columns]
    lower = {c.lower(): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c not in lower]
    if missing:
        raise PlatemapError(
            f"{source} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(df.columns) or 'no columns'} (required: {', '.join(REQUIRED_COLUMNS)})"
        )
    df = df.rename(columns={lower[k]: k for k in STANDARD_COLUMNS if k in lower})
    for col in STANDARD_COLUMNS:
        if col in df:
            df[col] = df[col].map(_as_text)
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)

    bad_wells = []
    wells = []
    for w in df["well"]:
        try:
            wells.append(normalize_well(w))
        except ValueError:
            bad_wells.append(w)
            wells.append(None)
    if bad_wells:
        raise PlatemapError(
            f"{source}: malformed well name(s) {', '.join(map(repr, bad_wells[:10]))} "
            "(expected A01 or A1)"
        )
    df["well"] = wells
    dup = df["well"][df["well"].duplicated()].unique().tolist()
    if dup:
        raise PlatemapError(f"{source}: well(s) listed more than once: {', '.join(dup)}")
    df["role"] = df["role"].str.lower()
    bad_roles = df.loc[~df["role"].isin(ROLES), ["well", "role"]]
    if len(bad_roles):
        pairs = ", ".join(f"{w}={r!r}" for w, r in bad_roles.head(10).itertuples(index=False))
        raise PlatemapError(
            f"{source}: unknown role(s) {pairs}; expected one of {', '.join(ROLES)}"
        )
    dose = pd.to_numeric(df["dose_um"].replace("", np.nan), errors="coerce")
    bad_dose = df.loc[dose.isna() & (df["dose_um"] != ""), ["well", "dose_um"]]
    if len(bad_dose):
        pairs = ", ".join(f"{w}={d!r}" for w, d in bad_dose.head(10).itertuples(index=False))
        raise PlatemapError(f"{source}: dose_um is not a number in well(s) {pairs}")
    df["dose_um"] = dose.fillna(0.0).astype("float64")
    missing_compound = df.loc[(df["compound"] == "") & (df["role"] != "empty"), "well"].tolist()
    if missing_compound:
        raise PlatemapError(
            f"{source}: no compound given for well(s) {', '.join(missing_compound[:10])} "
            "(only role 'empty' may leave it blank)"
        )
    for opt in ("moa", "target"):
        if opt not in df:
            df[opt] = ""
    return df


def _as_text(value: object) -> str:
    """Plate-map cell as text: missing values become ``""``, numbers their shortest repr."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value)


def make_shards(wells: list[str], wells_per_shard: int) -> dict[str, list[str]]:
    """Group wells, in plate order, into shards of ``wells_per_shard`` wells.

    Shard ids are zero-padded numbers (``"000"``, ``"001"``, ...). The grouping depends only on
    the set of wells and the shard size, so reruns give the same shards.
    """
    if wells_per_shard < 1:
        raise ValueError(f"wells_per_shard must be >= 1, got {wells_per_shard}")
    ordered = sorted(set(wells), key=well_sort_key)
    return {
        f"{i // wells_per_shard:03d}": ordered[i : i + wells_per_shard]
        for i in range(0, len(ordered), wells_per_shard)
    }
