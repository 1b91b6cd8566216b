"""CellProfiler's MeasureColocalization (through ``cp_measure``) under hcsflow's column names.

Slow reference for :func:`hcsflow.features.correlation.measure_correlation`: calls
cp_measure's per-object Pearson, overlap, Manders, RWC (ranks within each object) and
optionally Costes functions for every compartment and channel pair. cp_measure returns 0 for
labels without pixels; these rows are NaN here, as in hcsflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core import measurecolocalization as mc


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    manders_threshold: float = 15.0,
    costes: bool = False,
    costes_scale: int = 65535,
) -> dict[str, np.ndarray]:
    """cp_measure's colocalisation features, same names and rows as ``measure_correlation``.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
    compartments : mapping of str to ndarray of int, shape (H, W)
    n : int
    channel_names : sequence of str
    manders_threshold, costes, costes_scale :
        As in :func:`hcsflow.features.correlation.measure_correlation`.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
    """
    n_ch = len(channel_names)
    pairs = [(i, j) for i in range(n_ch) for j in range(i + 1, n_ch)]
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        present = np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1] > 0
        cols: dict[tuple[str, int], np.ndarray] = {}

        def put(feature: str, q: int, values: list[float], present=present, cols=cols) -> None:
            col = np.full(n, np.nan)
            col[: len(values)] = values
            col[~present] = np.nan
            cols[feature, q] = col

        for q, (i, j) in enumerate(pairs):
            a, b = image[i], image[j]
            res = mc.get_correlation_pearson(a, b, labels)
            put("Correlation", q, res[mc.F_CORRELATION_FORMAT])
            put("Slope", q, res[mc.F_SLOPE_FORMAT])
            res = mc.get_correlation_overlap(a, b, labels, thr=manders_threshold)
            put("Overlap", q, res[mc.F_OVERLAP_FORMAT])
            put("K", q, res[f"{mc.F_K_FORMAT}_1"])
            put("K2", q, res[f"{mc.F_K_FORMAT}_2"])
            res = mc.get_correlation_manders_fold(a, b, labels, thr=manders_threshold)
            put("Manders", q, res[f"{mc.F_MANDERS_FORMAT}_1"])
            put("Manders2", q, res[f"{mc.F_MANDERS_FORMAT}_2"])
            res = mc.get_correlation_rwc(a, b, labels, thr=manders_threshold)
            put("RWC", q, res[f"{mc.F_RWC_FORMAT}_1"])
            put("RWC2", q, res[f"{mc.F_RWC_FORMAT}_2"])
            if costes:
                # cp_measure refuses intensities outside [0, 1]; hcsflow clips them too.
                ca = np.clip(a, 0, 1).astype(np.float64)
                cb = np.clip(b, 0, 1).astype(np.float64)
                res = mc.get_correlation_costes(ca, cb, labels, scale_max=costes_scale)
                put("Costes", q, res[f"{mc.F_COSTES_FORMAT}_1"])
                put("Costes2", q, res[f"{mc.F_COSTES_FORMAT}_2"])
        features = ["Correlation", "Slope", "Overlap", "K", "Manders", "RWC"]
        if costes:
            features.append("Costes")
        for feat in features:
            for q, (i, j) in enumerate(pairs):
                a_name, b_name = channel_names[i], channel_names[j]
                out[f"{comp}_Correlation_{feat}_{a_name}_{b_name}"] = cols[feat, q]
                if (feat + "2", q) in cols:
                    out[f"{comp}_Correlation_{feat}_{b_name}_{a_name}"] = cols[feat + "2", q]
    return out
