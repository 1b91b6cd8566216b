"""Nuclear and whole-cell segmentation.

The public entry point is :class:`Segmenter`::

    seg = Segmenter.load()                      # the shipped model, or a path, or method="classical"
    nuclei, cells = seg.predict(dna, er, image_mpp=0.65)

Sub-modules: :mod:`~hcsflow.segmentation.metrics` (object matching, F1, AP, DSB score),
:mod:`~hcsflow.segmentation.postprocess` (deep watershed),
:mod:`~hcsflow.segmentation.classical` (Otsu + watershed, propagation),
:mod:`~hcsflow.segmentation.preprocess`, :mod:`~hcsflow.segmentation.model` (the network),
:mod:`~hcsflow.segmentation.inference` (tiles through the network, blending, maps to the input's
grid), :mod:`~hcsflow.segmentation.fields` (field QC flags, scale estimate, results),
:mod:`~hcsflow.segmentation.shard` (one workflow job: manifest rows -> masks + QC table),
:mod:`~hcsflow.segmentation.overlay` (outline pictures for QC).
``Segmenter`` is imported lazily so that the metrics do not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hcsflow.segmentation.segmenter import Segmenter

__all__ = ["Segmenter"]


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from hcsflow.segmentation.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
