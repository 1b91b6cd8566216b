"""The report's figures: matplotlib figures as PNG bytes, embedded in HTML as ``data:`` URIs."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.wells import plate_shape, row_letters
from hcsflow.wells import well_index as parse_well


def new_figure(width: float, height: float):
    """A matplotlib figure of ``width`` x ``height`` inches, laid out by constraints."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(fig, dpi: int) -> bytes:
    """``fig`` as PNG bytes at ``dpi``, without the software tag (same figure, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def img_tag(fig_id: str, png: bytes, alt: str) -> str:
    """A ``<figure>`` embedding ``png`` as a ``data:`` URI, with ``alt`` as its caption."""
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
    fig = new_figure(1.2 + nc * 0.2, 0.7 + nr * 0.2)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cm = colormaps[cmap].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=vmin, vmax=vmax, aspect="equal")
    ax.set_xticks(range(nc), [str(i + 1) for i in range(nc)], fontsize=6)
    ax.set_yticks(range(nr), [row_letters(i + 1) for i in range(nr)], fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return png_bytes(fig, dpi)


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


def scatter_categories(
    x: np.ndarray, y: np.ndarray, labels: Sequence[Any], title: str, dpi: int, noise: Any = None
) -> bytes:
    """PNG of a scatter plot of ``(x, y)``, shape (N,) each, coloured by category.

    Categories are sorted naturally (numbers by value) and listed in a legend when there are at
    most 30; the category equal to ``noise`` is drawn grey.
    """
    colors, cats = _categorical_colors(labels)
    fig = new_figure(6.0, 4.2)
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
    return png_bytes(fig, dpi)


def table_html(df: pd.DataFrame, table_id: str, max_rows: int) -> str:
    """The first ``max_rows`` rows of ``df`` as an HTML table, saying how many are left out."""
    shown = df.head(max_rows)
    body = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, na_rep="")
    body = body.replace("<table", f'<table id="{html.escape(table_id)}"', 1)
    more = (
        f"<p>{len(df) - max_rows} more rows in the Parquet file.</p>" if len(df) > max_rows else ""
    )
    return body + more
