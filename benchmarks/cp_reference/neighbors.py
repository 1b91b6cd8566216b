"""CellProfiler's MeasureObjectNeighbors (through ``cp_measure``) under hcsflow's column names.

Slow reference for :func:`hcsflow.features.neighbors.measure_neighbors`: calls
``cp_measure.multimask.measureobjectneighbors.measureobjectneighbors(labels, labels, ...)``
(objects and neighbours from the same compartment) on the label image relabelled to ``1..N``
and maps object ``i`` back to row ``label - 1``; object numbers are mapped back to labels too.
Absent objects are NaN.

Known cp_measure deviation from CellProfiler (kept here, so that it shows in comparisons):
cp_measure 0.3.0 reports ``order[:, 0] + 1`` -- the object itself -- as
``FirstClosestObjectNumber`` and the nearest other object as ``SecondClosestObjectNumber``,
where CellProfiler's module takes ``order[:, 1]`` and ``order[:, 2]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.multimask.measureobjectneighbors import (
    D_ADJACENT,
    D_WITHIN,
    measureobjectneighbors,
)
from skimage.segmentation import relabel_sequential

from hcsflow.features.neighbors import NEIGHBOR_FEATURES as _FEATURES


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    distance: int = 0,
) -> dict[str, np.ndarray]:
    """cp_measure's neighbour features, same names and rows as ``measure_neighbors``.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Unused.
    compartments : mapping of str to ndarray of int, shape (H, W)
    n : int
    channel_names : sequence of str
        Unused.
    distance : int
        As in :func:`hcsflow.features.neighbors.measure_neighbors`.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
    """
    method = D_ADJACENT if distance == 0 else D_WITHIN
    suffix = "Adjacent" if distance == 0 else str(distance)
    out: dict[str, np.ndarray] = {}
    for comp in ("Cells", "Nuclei"):
        if comp not in compartments:
            continue
        clean, forward, _inv = relabel_sequential(np.asarray(compartments[comp]))
        labels_of = np.asarray(forward.in_values, dtype=np.int64)  # sorted labels present
        if labels_of[0] != 0:
            labels_of = np.concatenate([[0], labels_of])  # [0, label_1, label_2, ...]
        rows = labels_of[1:] - 1
        raw: dict[str, np.ndarray] = {}
        if len(rows):
            raw = measureobjectneighbors(
                clean.astype(np.int32), clean.astype(np.int32), method, max(distance, 1)
            )
        for feat in _FEATURES:
            col = np.full(n, np.nan)
            if len(rows):
                values = np.asarray(raw[f"Neighbors_{feat}_{suffix}"], dtype=np.float64)
                if feat.endswith("ObjectNumber"):
                    values = np.where(values > 0, labels_of[values.astype(np.int64)], 0)
                col[rows] = values
            out[f"{comp}_Neighbors_{feat}_{suffix}"] = col
    return out
