"""A self-contained HTML report of a screen.

The report is one HTML file that opens offline: figures are PNG images embedded as base64
``data:`` URIs, styles are inline, there is no JavaScript and no reference to any network
resource. Each section is drawn only when its inputs exist (a campaign started from a table of
well profiles has no images, so no illumination or segmentation figures), and says so when
they are absent.

Figures (``id`` of each ``<img>``):

- ``plate-{plate}-cellcount``, ``plate-{plate}-qc``, ``plate-{plate}-activity``: plate heatmaps
- ``illum-{plate}-{channel}``: illumination functions (PNG files of the illumination stage)
- ``overlay-{plate}``: segmentation overlays (PNG files of the segmentation QC)
- ``umap-cluster``, ``umap-moa``, ``umap-activity``: UMAP of consensus profiles
- ``map-activity``, ``map-consistency``: mAP plots
- ``dose-response``: distance to negative controls against dose
- ``heatmap-consensus``: clustered heatmap of consensus profiles
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.profiling.columns import feature_columns
from hcsflow.wells import plate_shape, row_letters
from hcsflow.wells import well_index as parse_well

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


# --------------------------------------------------------------------------------------------
# figure helpers


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _img(fig_id: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img id="{html.escape(fig_id)}" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'
    )


def plate_heatmap(
    wells: Sequence[str],
    values: Sequence[float],
    title: str,
    *,
    cmap: str = "viridis",
    dpi: int = 90,
    vmin: float | None = None,
    vmax: float | None = None,
) -> bytes:
    """PNG of a plate heatmap of one value per well (wells without a value are grey)."""
    nr, nc = plate_shape(list(wells))
    grid = np.full((nr, nc), np.nan)
    for w, v in zip(wells, values, strict=True):
        r, c = parse_well(w)
        grid[r, c] = v
    fig = _figure(1.2 + nc * 0.2, 0.7 + nr * 0.2)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cm = colormaps[cmap].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=vmin, vmax=vmax, aspect="equal")
    ax.set_xticks(range(nc), [str(i + 1) for i in range(nc)], fontsize=6)
    ax.set_yticks(range(nr), [row_letters(i + 1) for i in range(nr)], fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig, dpi)


def _categorical_colors(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    from matplotlib import colormaps

    cats = sorted({str(x) for x in labels}, key=_natural)
    cmap = colormaps["tab10" if len(cats) <= 10 else "tab20"]
    lut = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    return np.array([lut[str(x)] for x in labels]), cats


def _natural(s: str) -> tuple[int, float, str]:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def _scatter_categories(
    x: np.ndarray, y: np.ndarray, labels: Sequence[Any], title: str, dpi: int, noise: Any = None
) -> bytes:
    colors, cats = _categorical_colors(labels)
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    labels = [str(v) for v in labels]
    for c in cats:
        m = np.array([lab == c for lab in labels])
        col = "#bbbbbb" if noise is not None and c == str(noise) else colors[m][0]
        ax.scatter(x[m], y[m], s=18, color=col, label=c[:40], edgecolors="none")
    ax.set_xlabel("UMAP_1")
    ax.set_ylabel("UMAP_2")
    ax.set_title(title, fontsize=10)
    if len(cats) <= 30:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _png(fig, dpi)


def _table_html(df: pd.DataFrame, table_id: str, max_rows: int) -> str:
    shown = df.head(max_rows)
    body = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, na_rep="")
    body = body.replace("<table", f'<table id="{html.escape(table_id)}"', 1)
    more = (
        f"<p>{len(df) - max_rows} more rows in the Parquet file.</p>" if len(df) > max_rows else ""
    )
    return body + more


# --------------------------------------------------------------------------------------------
# sections


def _cell_count_column(df: pd.DataFrame, configured: str | None) -> str | None:
    if configured:
        if configured not in df.columns:
            raise ValueError(f"report.cell_count_column {configured!r} is not a profiles column")
        return configured
    return next((c for c in CELL_COUNT_COLUMNS if c in df.columns), None)


def _qc_columns(df: pd.DataFrame) -> list[str]:
    return [
        c
        for c in df.columns
        if c.startswith("Metadata_")
        and re.search(r"qc|flag", c, flags=re.IGNORECASE)
        and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))
    ]


def _plate_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    prof = inp.profiles
    if prof is None or "Metadata_Well" not in prof.columns:
        return "<p>No well-level profiles: plate heatmaps are not drawn.</p>"
    dpi = cfg["dpi"]
    count_col = _cell_count_column(prof, cfg["cell_count_column"])
    qc_cols = _qc_columns(prof)
    act = inp.activity
    act_by = [c for c in ("Metadata_Compound", "Metadata_Dose") if act is not None and c in act]
    parts = []
    plates = prof["Metadata_Plate"] if "Metadata_Plate" in prof else pd.Series("plate", prof.index)
    for plate in sorted(plates.astype(str).unique()):
        p = prof[plates.astype(str) == plate]
        wells = p["Metadata_Well"].astype(str).tolist()
        figs = []
        if count_col is not None:
            figs.append(
                _img(
                    f"plate-{plate}-cellcount",
                    plate_heatmap(
                        wells, p[count_col].to_numpy(float), f"{plate}: {count_col}", dpi=dpi
                    ),
                    f"{plate}: cells per well ({count_col})",
                )
            )
        qc_table = inp.qc.get(plate)
        if qc_cols or qc_table is not None:
            flagged = pd.Series(0.0, index=wells)
            sources = list(qc_cols)
            if qc_cols:
                flagged += p[qc_cols].astype(float).fillna(0).sum(axis=1).to_numpy()
            if qc_table is not None:
                n = qc_table.groupby("Metadata_Well").size()
                qc_wells = sorted(set(n.index) - set(wells))
                flagged = pd.concat([flagged, pd.Series(0.0, index=qc_wells)])
                flagged = flagged.add(n.astype(float), fill_value=0.0)
                sources += sorted(set(qc_table["Metadata_QC_Source"]))
            figs.append(
                _img(
                    f"plate-{plate}-qc",
                    plate_heatmap(
                        list(flagged.index),
                        flagged.to_numpy(),
                        f"{plate}: QC flags",
                        cmap="Reds",
                        dpi=dpi,
                        vmin=0,
                    ),
                    f"{plate}: QC flags and QC records per well ({', '.join(sources)})",
                )
            )
        if act is not None and act_by and all(c in p.columns for c in act_by):
            keys = act[act_by].astype("string").fillna("<NA>").agg("|".join, axis=1)
            score = dict(zip(keys, -np.log10(act["q_value"].clip(lower=1e-6)), strict=True))
            wkeys = p[act_by].astype("string").fillna("<NA>").agg("|".join, axis=1)
            vals = np.array([score.get(k, np.nan) for k in wkeys], dtype=float)
            figs.append(
                _img(
                    f"plate-{plate}-activity",
                    plate_heatmap(
                        wells, vals, f"{plate}: activity -log10(q)", cmap="magma", dpi=dpi, vmin=0
                    ),
                    f"{plate}: phenotypic activity of each well's treatment, -log10(q)",
                )
            )
        if not figs:
            figs.append("<p>No cell counts, QC flags or activity for this plate.</p>")
        parts.append(f"<h3>{html.escape(plate)}</h3><div class='row'>{''.join(figs)}</div>")
    return "".join(parts)


def _embed_png(path: Path) -> bytes:
    return Path(path).read_bytes()


def _illumination_section(inp: ReportInputs) -> str:
    if not inp.illumination:
        return (
            "<p>No illumination functions (none estimated, or the run started from profiles).</p>"
        )
    parts = []
    for plate in sorted(inp.illumination):
        figs = [
            _img(f"illum-{plate}-{ch}", _embed_png(path), f"{plate} {ch}")
            for ch, path in sorted(inp.illumination[plate].items())
        ]
        parts.append(f"<h3>{html.escape(plate)}</h3><div class='row'>{''.join(figs)}</div>")
    return "".join(parts)


def _overlay_section(inp: ReportInputs) -> str:
    if not inp.overlays:
        return "<p>No segmentation overlays (no images segmented in this run).</p>"
    return "".join(
        _img(f"overlay-{plate}", _embed_png(path), f"{plate}: segmentation overlays")
        for plate, path in sorted(inp.overlays.items())
    )


def _umap_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    cl = inp.clusters
    if cl is None or not {"UMAP_1", "UMAP_2"} <= set(cl.columns) or cl.empty:
        return "<p>No UMAP embedding.</p>"
    dpi = cfg["dpi"]
    x, y = cl["UMAP_1"].to_numpy(), cl["UMAP_2"].to_numpy()
    out = []
    if "Metadata_Cluster" in cl:
        lab = cl["Metadata_Cluster"].astype(int)
        out.append(
            _img(
                "umap-cluster",
                _scatter_categories(
                    x, y, lab, "UMAP coloured by cluster (-1: unclustered)", dpi, noise=-1
                ),
                "UMAP of consensus profiles coloured by cluster",
            )
        )
    if "Metadata_MoA" in cl and cl["Metadata_MoA"].notna().any():
        out.append(
            _img(
                "umap-moa",
                _scatter_categories(x, y, cl["Metadata_MoA"].fillna("unknown"), "UMAP by MoA", dpi),
                "UMAP of consensus profiles coloured by MoA",
            )
        )
    if "Metadata_Active" in cl:
        act = np.where(cl["Metadata_Active"].astype(bool), "active", "inactive")
        out.append(
            _img(
                "umap-activity",
                _scatter_categories(
                    x, y, act, "UMAP by phenotypic activity", dpi, noise="inactive"
                ),
                "UMAP of consensus profiles coloured by activity call",
            )
        )
    return "<div class='row'>" + "".join(out) + "</div>"


def _map_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    dpi = cfg["dpi"]
    out = []
    act = inp.activity
    if act is not None and not act.empty and act["mean_average_precision"].notna().any():
        fig = _figure(6.0, 4.5)
        ax = fig.add_subplot()
        a = act[act["mean_average_precision"].notna()]
        col = np.where(a["active"].astype(bool), "#d62728", "#7f7f7f")
        ax.scatter(
            a["mean_average_precision"],
            -np.log10(a["q_value"].clip(lower=1e-6)),
            c=col,
            s=14,
            edgecolors="none",
        )
        ax.set_xlabel("mAP (replicates vs negative controls)")
        ax.set_ylabel("-log10 q")
        ax.set_title(
            f"Phenotypic activity: {int(a['active'].sum())} of {len(a)} active", fontsize=10
        )
        out.append(_img("map-activity", _png(fig, dpi), "Phenotypic activity mAP and q-value"))
    con = inp.consistency
    if con is not None and not con.empty and con["mean_average_precision"].notna().any():
        c = con[con["mean_average_precision"].notna()].sort_values("mean_average_precision")
        fig = _figure(6.5, 1.0 + 0.22 * len(c))
        ax = fig.add_subplot()
        ax.barh(
            [str(m)[:45] for m in c["Metadata_MoA"]],
            c["mean_average_precision"],
            color=np.where(c["consistent"].astype(bool), "#1f77b4", "#aec7e8"),
        )
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel("mAP (same MoA vs other MoAs)")
        ax.set_title("MoA consistency (dark: q below threshold)", fontsize=10)
        out.append(_img("map-consistency", _png(fig, dpi), "MoA consistency mAP per MoA"))
    if not out:
        return "<p>No mAP scores.</p>"
    return "<div class='row'>" + "".join(out) + "</div>"


def _dose_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    act = inp.activity
    if act is None or "Metadata_Dose" not in act or act["Metadata_Dose"].nunique() < 2:
        return "<p>No dose series.</p>"
    comps = (
        act.groupby("Metadata_Compound")["negcon_distance"].max().sort_values(ascending=False)
    ).index[: cfg["dose_response_max_compounds"]]
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    for i, comp in enumerate(sorted(comps, key=str)):
        g = act[act["Metadata_Compound"] == comp].sort_values("Metadata_Dose")
        ax.plot(
            g["Metadata_Dose"],
            g["negcon_distance"],
            "-",
            color=cmap(i % 20),
            lw=1,
            label=str(comp)[:30],
        )
        a = g[g["active"].astype(bool)]
        ax.plot(a["Metadata_Dose"], a["negcon_distance"], "o", color=cmap(i % 20), ms=4)
    if (act["Metadata_Dose"] > 0).all():
        ax.set_xscale("log")
    ax.axhline(1.0, color="k", lw=0.5, ls=":")
    ax.set_xlabel("dose (µM)")
    ax.set_ylabel("distance to negative controls")
    ax.set_title("Dose response (dots: active doses)", fontsize=10)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _img("dose-response", _png(fig, cfg["dpi"]), "Distance to negative controls vs dose")


def _heatmap_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    cons = inp.consensus
    if cons is None or cons.empty:
        return "<p>No consensus profiles.</p>"
    feats = feature_columns(cons)
    if len(feats) < 2 or len(cons) < 2:
        return "<p>Too few consensus profiles or features for a heatmap.</p>"
    from scipy.cluster.hierarchy import leaves_list, linkage

    x = cons[feats].to_numpy(dtype=float)
    ok = np.isfinite(x).all(axis=0)
    x, feats = x[:, ok], [f for f, k in zip(feats, ok, strict=True) if k]
    if cons.shape[0] > cfg["heatmap_max_profiles"]:
        keep = np.argsort(-np.linalg.norm(x, axis=1), kind="stable")[: cfg["heatmap_max_profiles"]]
        keep.sort()
        x, cons = x[keep], cons.iloc[keep]
    if len(feats) > cfg["heatmap_max_features"]:
        top = np.argsort(-x.var(axis=0), kind="stable")[: cfg["heatmap_max_features"]]
        top.sort()
        x, feats = x[:, top], [feats[i] for i in top]
    if len(x) > 2:
        rows = leaves_list(
            linkage(x, "average", metric="cosine" if np.all(np.any(x, 1)) else "euclidean")
        )
    else:
        rows = np.arange(len(x))
    cols = (
        leaves_list(linkage(x.T, "average", metric="euclidean"))
        if x.shape[1] > 2
        else np.arange(x.shape[1])
    )
    z = x[np.ix_(rows, cols)]
    lim = float(np.nanpercentile(np.abs(z), 98)) or 1.0
    label_cols = [c for c in ("Metadata_Compound", "Metadata_Dose") if c in cons.columns]
    labels = (
        cons.iloc[rows][label_cols].astype(str).agg(" ".join, axis=1).tolist()
        if label_cols
        else [str(i) for i in rows]
    )
    fig = _figure(min(14.0, 3 + 0.06 * len(cols)), min(20.0, 2 + 0.12 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(z, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    if len(rows) <= 120:
        ax.set_yticks(range(len(rows)), [lab[:40] for lab in labels], fontsize=5)
    else:
        ax.set_yticks([])
    ax.set_xticks([])
    ax.set_xlabel(f"{len(cols)} features (clustered)")
    ax.set_title("Consensus profiles, clustered (rows: cosine average linkage)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.5)
    return _img(
        "heatmap-consensus", _png(fig, cfg["dpi"]), "Clustered heatmap of consensus profiles"
    )


def _tables_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    out = []
    n = cfg["table_rows"]
    if inp.activity is not None and not inp.activity.empty:
        a = inp.activity.sort_values(
            ["q_value", "mean_average_precision"],
            ascending=[True, False],
            na_position="last",
            kind="stable",
        )
        out.append("<h3>Most active treatments</h3>" + _table_html(a, "table-activity", n))
    if inp.clusters is not None and "Metadata_Cluster" in inp.clusters:
        cl = inp.clusters[inp.clusters["Metadata_Cluster"] >= 0]
        cols = [
            c
            for c in (
                "Metadata_Cluster",
                "Metadata_Compound",
                "Metadata_Dose",
                "Metadata_MoA",
                "Metadata_Neighbor_1",
            )
            if c in cl.columns
        ]
        if not cl.empty:
            out.append(
                "<h3>Cluster members</h3>"
                + _table_html(cl.sort_values(cols[:3], kind="stable")[cols], "table-clusters", n)
            )
    if inp.dose_response is not None and not inp.dose_response.empty:
        out.append(
            "<h3>Dose response per compound</h3>"
            + _table_html(inp.dose_response, "table-dose-response", n)
        )
    return "".join(out) or "<p>No analysis tables.</p>"


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-top:.5em}
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0}img{max-width:100%}figcaption{font-size:.8em;color:#555}
table{border-collapse:collapse;font-size:.8em}td,th{padding:2px 6px;border-bottom:1px solid #eee}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
"""


def render_report(inputs: ReportInputs, config: Mapping[str, Any] | None = None) -> str:
    """Render the report as one self-contained HTML string.

    Parameters
    ----------
    inputs : ReportInputs
    config : mapping, optional
        The ``report`` configuration section; keys not given take the defaults of the
        configuration schema.

    Returns
    -------
    str
        HTML with every figure embedded; no external references.
    """
    from hcsflow.config import config_section

    cfg = config_section("report", config)
    title = html.escape(str(cfg["title"]))
    summary = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_fmt(v))}</dd>"
        for k, v in sorted(inputs.summary.items())
    )
    sections = [
        ("summary", "Summary", f"<dl class='summary'>{summary}</dl>" if summary else "<p>-</p>"),
        ("plates", "Plates", _plate_section(inputs, cfg)),
        ("illumination", "Illumination functions", _illumination_section(inputs)),
        ("segmentation", "Segmentation overlays", _overlay_section(inputs)),
        ("umap", "UMAP of consensus profiles", _umap_section(inputs, cfg)),
        ("map", "Phenotypic activity and MoA consistency", _map_section(inputs, cfg)),
        ("dose", "Dose response", _dose_section(inputs, cfg)),
        ("heatmap", "Consensus profiles", _heatmap_section(inputs, cfg)),
        ("tables", "Tables", _tables_section(inputs, cfg)),
    ]
    nav = " · ".join(f"<a href='#sec-{sid}'>{html.escape(name)}</a>" for sid, name, _ in sections)
    body = "".join(
        f"<section id='sec-{sid}'><h2>{html.escape(name)}</h2>{content}</section>"
        for sid, name, content in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head>"
        f"<body><h1>{title}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def write_report(
    path: str | Path, inputs: ReportInputs, config: Mapping[str, Any] | None = None
) -> None:
    """Render the report and write it atomically to ``path``."""
    from hcsflow.io import atomic_path

    text = render_report(inputs, config)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
