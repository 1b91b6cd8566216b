"""The report's sections: each an HTML fragment, drawn only when its inputs exist.

Each ``*_section`` function takes the :class:`~hcsflow.report.inputs.ReportInputs` (and the
``report`` configuration section) and returns HTML that says so when its inputs are absent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.profiling.columns import feature_columns
from hcsflow.report.figures import (
    img_tag,
    new_figure,
    plate_heatmap,
    png_bytes,
    scatter_categories,
    table_html,
)
from hcsflow.report.inputs import CELL_COUNT_COLUMNS, ReportInputs


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


def plate_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """Heatmaps per plate of cell count, QC flags and phenotypic activity."""
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
                img_tag(
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
                img_tag(
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
                img_tag(
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


def illumination_section(inp: ReportInputs) -> str:
    """The illumination functions' PNGs, per plate and channel."""
    if not inp.illumination:
        return (
            "<p>No illumination functions (none estimated, or the run started from profiles).</p>"
        )
    parts = []
    for plate in sorted(inp.illumination):
        figs = [
            img_tag(f"illum-{plate}-{ch}", _embed_png(path), f"{plate} {ch}")
            for ch, path in sorted(inp.illumination[plate].items())
        ]
        parts.append(f"<h3>{html.escape(plate)}</h3><div class='row'>{''.join(figs)}</div>")
    return "".join(parts)


def overlay_section(inp: ReportInputs) -> str:
    """The segmentation overlay PNG of each plate."""
    if not inp.overlays:
        return "<p>No segmentation overlays (no images segmented in this run).</p>"
    return "".join(
        img_tag(f"overlay-{plate}", _embed_png(path), f"{plate}: segmentation overlays")
        for plate, path in sorted(inp.overlays.items())
    )


def umap_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """UMAP scatter plots of consensus profiles by cluster, MoA and activity."""
    cl = inp.clusters
    if cl is None or not {"UMAP_1", "UMAP_2"} <= set(cl.columns) or cl.empty:
        return "<p>No UMAP embedding.</p>"
    dpi = cfg["dpi"]
    x, y = cl["UMAP_1"].to_numpy(), cl["UMAP_2"].to_numpy()
    out = []
    if "Metadata_Cluster" in cl:
        lab = cl["Metadata_Cluster"].astype(int)
        out.append(
            img_tag(
                "umap-cluster",
                scatter_categories(
                    x, y, lab, "UMAP coloured by cluster (-1: unclustered)", dpi, noise=-1
                ),
                "UMAP of consensus profiles coloured by cluster",
            )
        )
    if "Metadata_MoA" in cl and cl["Metadata_MoA"].notna().any():
        out.append(
            img_tag(
                "umap-moa",
                scatter_categories(x, y, cl["Metadata_MoA"].fillna("unknown"), "UMAP by MoA", dpi),
                "UMAP of consensus profiles coloured by MoA",
            )
        )
    if "Metadata_Active" in cl:
        act = np.where(cl["Metadata_Active"].astype(bool), "active", "inactive")
        out.append(
            img_tag(
                "umap-activity",
                scatter_categories(x, y, act, "UMAP by phenotypic activity", dpi, noise="inactive"),
                "UMAP of consensus profiles coloured by activity call",
            )
        )
    return "<div class='row'>" + "".join(out) + "</div>"


def map_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """mAP plots of phenotypic activity and MoA consistency."""
    dpi = cfg["dpi"]
    out = []
    act = inp.activity
    if act is not None and not act.empty and act["mean_average_precision"].notna().any():
        fig = new_figure(6.0, 4.5)
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
        out.append(
            img_tag("map-activity", png_bytes(fig, dpi), "Phenotypic activity mAP and q-value")
        )
    con = inp.consistency
    if con is not None and not con.empty and con["mean_average_precision"].notna().any():
        c = con[con["mean_average_precision"].notna()].sort_values("mean_average_precision")
        fig = new_figure(6.5, 1.0 + 0.22 * len(c))
        ax = fig.add_subplot()
        ax.barh(
            [str(m)[:45] for m in c["Metadata_MoA"]],
            c["mean_average_precision"],
            color=np.where(c["consistent"].astype(bool), "#1f77b4", "#aec7e8"),
        )
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel("mAP (same MoA vs other MoAs)")
        ax.set_title("MoA consistency (dark: q below threshold)", fontsize=10)
        out.append(img_tag("map-consistency", png_bytes(fig, dpi), "MoA consistency mAP per MoA"))
    if not out:
        return "<p>No mAP scores.</p>"
    return "<div class='row'>" + "".join(out) + "</div>"


def dose_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """Distance to negative controls against dose, per compound."""
    act = inp.activity
    if act is None or "Metadata_Dose" not in act or act["Metadata_Dose"].nunique() < 2:
        return "<p>No dose series.</p>"
    comps = (
        act.groupby("Metadata_Compound")["negcon_distance"].max().sort_values(ascending=False)
    ).index[: cfg["dose_response_max_compounds"]]
    fig = new_figure(7.0, 4.5)
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
    return img_tag(
        "dose-response", png_bytes(fig, cfg["dpi"]), "Distance to negative controls vs dose"
    )


def heatmap_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """Clustered heatmap of the consensus profiles."""
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
    fig = new_figure(min(14.0, 3 + 0.06 * len(cols)), min(20.0, 2 + 0.12 * len(rows)))
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
    return img_tag(
        "heatmap-consensus", png_bytes(fig, cfg["dpi"]), "Clustered heatmap of consensus profiles"
    )


def tables_section(inp: ReportInputs, cfg: Mapping[str, Any]) -> str:
    """The analysis tables, their first rows."""
    out = []
    n = cfg["table_rows"]
    if inp.activity is not None and not inp.activity.empty:
        a = inp.activity.sort_values(
            ["q_value", "mean_average_precision"],
            ascending=[True, False],
            na_position="last",
            kind="stable",
        )
        out.append("<h3>Most active treatments</h3>" + table_html(a, "table-activity", n))
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
                + table_html(cl.sort_values(cols[:3], kind="stable")[cols], "table-clusters", n)
            )
    if inp.dose_response is not None and not inp.dose_response.empty:
        out.append(
            "<h3>Dose response per compound</h3>"
            + table_html(inp.dose_response, "table-dose-response", n)
        )
    return "".join(out) or "<p>No analysis tables.</p>"
