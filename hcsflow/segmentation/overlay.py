"""Segmentation overlays for QC: object outlines drawn on the images.

Cells are outlined in yellow and nuclei in magenta over a composite of the nuclear channel
(blue) and the cytoplasm channel (grey-green). The fields shown for a plate are chosen
deterministically (:func:`choose_fields`), so reruns give the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

CELL_COLOUR = (255, 220, 0)
NUCLEUS_COLOUR = (255, 0, 200)


def _scale(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, (0.5, 99.7))
    if not hi > lo:
        return np.zeros(img.shape, np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def outline_overlay(
    nuclear: np.ndarray,
    cytoplasm: np.ndarray | None,
    nuclei: np.ndarray,
    cells: np.ndarray,
) -> np.ndarray:
    """RGB picture of a field with cell and nuclear outlines.

    Parameters
    ----------
    nuclear : ndarray, shape (H, W)
    cytoplasm : ndarray of shape (H, W), or None
    nuclei, cells : ndarray of int, shape (H, W)
        Label images.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    nuc = _scale(nuclear)
    cyto = _scale(cytoplasm) if cytoplasm is not None else np.zeros_like(nuc)
    rgb = np.stack([0.6 * cyto, 0.8 * cyto, np.maximum(nuc, 0.3 * cyto)], axis=-1)
    rgb = (rgb * 255).astype(np.uint8)
    rgb[find_boundaries(cells, mode="inner")] = CELL_COLOUR
    rgb[find_boundaries(nuclei, mode="inner")] = NUCLEUS_COLOUR
    return rgb


def choose_fields(manifest: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` fields spread evenly over the plate in well/site order (deterministic).

    Wells of role ``empty`` are skipped when the manifest has a ``Metadata_Role`` column.
    """
    df = manifest
    if "Metadata_Role" in df.columns:
        filled = df[df["Metadata_Role"] != "empty"]
        df = filled if len(filled) else df
    df = df.sort_values(["Metadata_Well", "Metadata_Site"]).reset_index(drop=True)
    if n <= 0 or df.empty:
        return df.iloc[:0]
    idx = np.unique(np.linspace(0, len(df) - 1, min(n, len(df))).round().astype(int))
    return df.iloc[idx].reset_index(drop=True)


def centre_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Central ``size x size`` crop of the last two axes (the whole image if smaller)."""
    h, w = arr.shape[-2:]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return arr[..., y0 : y0 + size, x0 : x0 + size]


def save_overlay_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    title: str = "",
    columns: int = 2,
) -> None:
    """Write RGB panels with captions as one PNG (atomic, byte-identical on reruns).

    Parameters
    ----------
    panels : sequence of (caption, ndarray of uint8, shape (H, W, 3))
    path : path-like
        Destination PNG.
    title : str
        Figure title.
    columns : int
        Panels per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hcsflow.io import atomic_path

    n = max(1, len(panels))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no fields", ha="center", va="center")
    for ax, (caption, rgb) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(caption, fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
