"""CellProfiler's MeasureGranularity (cp_measure) under hcsflow's column names.

The image is passed as float64 (hcsflow computes the morphology in float64; cp_measure would
otherwise run it in the input's float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core.measuregranularity import get_granularity

from .intensity import contiguous, scatter


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    spectrum_length: int = 16,
) -> dict[str, np.ndarray]:
    """cp_measure's granularity spectrum, keyed and ordered like ``measure_granularity``."""
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        lab, rows = contiguous(np.asarray(labels), n)
        for c, ch in enumerate(channel_names):
            res = get_granularity(
                lab,
                np.asarray(image[c], dtype=np.float64),
                subsample_size=subsample_size,
                image_sample_size=image_sample_size,
                element_size=element_size,
                granular_spectrum_length=spectrum_length,
            )
            for s in range(1, spectrum_length + 1):
                out[f"{comp}_Granularity_{s}_{ch}"] = scatter(res[f"Granularity_{s}"], rows, n)
    return out
