"""CellProfiler's MeasureObjectIntensityDistribution (cp_measure) under hcsflow's column names.

Scaled bins, centre = each object itself (CellProfiler's defaults); no Zernike moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core.measureobjectintensitydistribution import get_radial_distribution

from .intensity import contiguous, scatter


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    bin_count: int = 4,
    center: str = "self",
) -> dict[str, np.ndarray]:
    """cp_measure's radial distribution, keyed and ordered like ``measure_radial``."""
    if center != "self":
        raise ValueError("only center='self' is compared")
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        lab, rows = contiguous(np.asarray(labels), n)
        for c, ch in enumerate(channel_names):
            res = get_radial_distribution(
                lab, np.asarray(image[c], dtype=np.float64), scaled=True, bin_count=bin_count
            )
            for feat in ("FracAtD", "MeanFrac", "RadialCV"):
                for b in range(1, bin_count + 1):
                    values = res[f"RadialDistribution_{feat}_{b}of{bin_count}"]
                    key = f"{comp}_RadialDistribution_{feat}_{ch}_{b}of{bin_count}"
                    out[key] = scatter(values, rows, n)
    return out
