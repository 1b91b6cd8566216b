"""Per-cell measurements (CellProfiler-class features) and CNN embeddings.

``measure(image, nuclei, cells, channel_names)`` gives one row per cell with the Cells, Nuclei
and Cytoplasm measurements of every family (:data:`hcsflow.features.core.FAMILIES`);
``Embedder.load(path_or_name)`` gives CNN embeddings per cell or per crop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hcsflow.features.core import FAMILIES, MeasureParams, measure

if TYPE_CHECKING:
    from hcsflow.features.embed import Embedder

__all__ = ["FAMILIES", "Embedder", "MeasureParams", "measure"]


def __getattr__(name: str) -> Any:
    # the embedder imports torch; load it only when asked for
    if name == "Embedder":
        from hcsflow.features.embed import Embedder

        return Embedder
    raise AttributeError(f"module 'hcsflow.features' has no attribute {name!r}")
