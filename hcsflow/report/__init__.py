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

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.report.figures import plate_heatmap
from hcsflow.report.inputs import CELL_COUNT_COLUMNS, ReportInputs, collect_inputs
from hcsflow.report.sections import (
    dose_section,
    heatmap_section,
    illumination_section,
    map_section,
    overlay_section,
    plate_section,
    tables_section,
    umap_section,
)
from hcsflow.wells import plate_shape
from hcsflow.wells import well_index as parse_well

__all__ = [
    "CELL_COUNT_COLUMNS",
    "ReportInputs",
    "collect_inputs",
    "parse_well",
    "plate_heatmap",
    "plate_shape",
    "render_report",
    "write_report",
]


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
        ("plates", "Plates", plate_section(inputs, cfg)),
        ("illumination", "Illumination functions", illumination_section(inputs)),
        ("segmentation", "Segmentation overlays", overlay_section(inputs)),
        ("umap", "UMAP of consensus profiles", umap_section(inputs, cfg)),
        ("map", "Phenotypic activity and MoA consistency", map_section(inputs, cfg)),
        ("dose", "Dose response", dose_section(inputs, cfg)),
        ("heatmap", "Consensus profiles", heatmap_section(inputs, cfg)),
        ("tables", "Tables", tables_section(inputs, cfg)),
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
