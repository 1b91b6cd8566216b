"""CellProfiler's MeasureObjectIntensity (cp_measure) under hcsflow's column names.

cp_measure's ``get_intensity`` is called with ``legacy=True``: CellProfiler 4.2's quartile rule
(position ``n q`` with linear interpolation, MAD at ``q = 1/2``). Its default ``legacy=False``
(``numpy.percentile``'s ``(n - 1) q``) is not what CellProfiler computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core.measureobjectintensity import get_intensity


def contiguous(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel ``labels`` to ``1..m`` (cp_measure's requirement).

    Returns the relabelled image and ``rows`` (m,): output row of relabelled object ``i + 1``.
    """
    present = np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1] > 0
    ids = np.flatnonzero(present) + 1
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], ids - 1


def scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Values of the present objects -> float64 array of n rows, NaN elsewhere."""
    out = np.full(n, np.nan)
    out[rows] = np.asarray(values, dtype=np.float64)[: rows.size]
    return out


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """cp_measure's intensity features, keyed and ordered like ``measure_intensity``."""
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        lab, rows = contiguous(np.asarray(labels), n)
        for c, ch in enumerate(channel_names):
            res = get_intensity(lab, np.asarray(image[c], dtype=np.float64), legacy=True)
            for key, values in res.items():
                category, feat = key.split("_", 1)
                out[f"{comp}_{category}_{feat}_{ch}"] = scatter(values, rows, n)
    return out
