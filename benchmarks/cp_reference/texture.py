"""CellProfiler's MeasureTexture (through ``cp_measure``) under hcsflow's column names.

Slow reference for :func:`hcsflow.features.texture.measure_texture`: calls
``cp_measure.core.measuretexture.get_texture`` (mahotas' Haralick features on CellProfiler's
quantisation) once per compartment, channel and scale, and maps its objects (present labels,
in increasing order) back to rows ``label - 1``; absent objects are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core.measuretexture import F_HARALICK, get_texture


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    scales: Sequence[int] = (3,),
    gray_levels: int = 256,
) -> dict[str, np.ndarray]:
    """cp_measure's texture features, same names and rows as ``measure_texture``.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
    compartments : mapping of str to ndarray of int, shape (H, W)
    n : int
    channel_names : sequence of str
    scales, gray_levels :
        As in :func:`hcsflow.features.texture.measure_texture`.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
    """
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        present = np.unique(labels)
        present = present[present > 0]
        raw: dict[str, np.ndarray] = {}
        for ci, ch in enumerate(channel_names):
            # cp_measure's img_as_ubyte refuses floats outside [-1, 1]; hcsflow clips.
            pixels = np.clip(image[ci], -1.0, 1.0)
            for scale in scales:
                res = get_texture(labels, pixels, scale=scale, gray_levels=gray_levels)
                for key, values in res.items():
                    raw[f"{ch}|{key}"] = np.asarray(values, dtype=np.float64)
        for feat in F_HARALICK:
            for ch in channel_names:
                for scale in scales:
                    for d in range(4):
                        col = np.full(n, np.nan)
                        col[present - 1] = raw[f"{ch}|{feat}_{scale}_{d:02d}_{gray_levels}"]
                        out[f"{comp}_Texture_{feat}_{ch}_{scale}_{d:02d}_{gray_levels}"] = col
    return out
