"""What the report shows: the tables and figures of a results folder, each possibly absent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

#: Columns tried, in order, for the number of cells per well.
CELL_COUNT_COLUMNS = (
    "Image_Count_Cells",
    "Metadata_Count_Cells",
    "Metadata_Cell_Count",
    "Metadata_Count",
    "Metadata_Object_Count",
    "Metadata_n_cells",
    "Cells_Count",
    "Count_Cells",
    "Image_Count_Cells",
)


@dataclass
class ReportInputs:
    """Everything the report can show; each entry may be absent.

    Attributes
    ----------
    profiles : DataFrame or None
        Well-level profiles (``Metadata_Plate``, ``Metadata_Well`` and features).
    consensus, activity, consistency, clusters, dose_response : DataFrame or None
        Tables of the campaign and analysis stages.
    qc : mapping of plate -> DataFrame
        QC records of a plate (one row per flagged field or well, ``Metadata_Well`` column),
        e.g. ``results/qc/{plate}_discovery.parquet``.
    illumination : mapping of plate -> mapping of channel -> PNG path
    overlays : mapping of plate -> PNG path
    summary : mapping
        Numbers to list at the top (e.g. NSC accuracy).
    """

    profiles: pd.DataFrame | None = None
    consensus: pd.DataFrame | None = None
    activity: pd.DataFrame | None = None
    consistency: pd.DataFrame | None = None
    clusters: pd.DataFrame | None = None
    dose_response: pd.DataFrame | None = None
    qc: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    illumination: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)
    overlays: Mapping[str, Path] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


def collect_inputs(results: str | Path) -> ReportInputs:
    """Read whatever exists of a results folder's tables and figures.

    Reads ``campaign/profiles.parquet``, ``campaign/consensus.parquet``,
    ``analysis/{activity,consistency,clusters,dose_response}.parquet``, the QC tables
    ``qc/{plate}_*.parquet`` that have ``Metadata_Plate`` and ``Metadata_Well`` columns, and
    lists ``illumination/{plate}/{channel}.png`` and ``qc/{plate}_overlays.png``.
    """
    from hcsflow.io import read_provenance, read_table

    results = Path(results)

    def table(rel: str) -> pd.DataFrame | None:
        p = results / rel
        return read_table(p) if p.exists() else None

    illum: dict[str, dict[str, Path]] = {}
    for png in sorted((results / "illumination").glob("*/*.png")):
        illum.setdefault(png.parent.name, {})[png.stem] = png
    qc: dict[str, pd.DataFrame] = {}
    for path in sorted((results / "qc").glob("*_*.parquet")):
        t = read_table(path)
        if "Metadata_Well" not in t.columns or "Metadata_Plate" not in t.columns:
            continue
        for plate, g in t.groupby("Metadata_Plate", sort=True):
            prev = qc.get(str(plate))
            g = g[["Metadata_Well"]].assign(Metadata_QC_Source=path.stem)
            qc[str(plate)] = g if prev is None else pd.concat([prev, g], ignore_index=True)
    overlays = {
        p.name[: -len("_overlays.png")]: p for p in sorted((results / "qc").glob("*_overlays.png"))
    }
    summary: dict[str, Any] = {}
    act = results / "analysis" / "activity.parquet"
    if act.exists():
        summary = dict(read_provenance(act).get("summary", {}))
    return ReportInputs(
        profiles=table("campaign/profiles.parquet"),
        consensus=table("campaign/consensus.parquet"),
        activity=table("analysis/activity.parquet"),
        consistency=table("analysis/consistency.parquet"),
        clusters=table("analysis/clusters.parquet"),
        dose_response=table("analysis/dose_response.parquet"),
        qc=qc,
        illumination=illum,
        overlays=overlays,
        summary=summary,
    )
