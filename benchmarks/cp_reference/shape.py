"""CellProfiler's MeasureObjectSizeShape (through ``cp_measure``) under hcsflow's column names.

Slow reference for :func:`hcsflow.features.shape.measure_shape`: calls cp_measure's
``get_sizeshape`` (skimage regionprops + CellProfiler's radii and moments), ``get_zernike``
(centrosome's minimum enclosing circle and Zernike polynomials) and ``get_feret`` (centrosome's
convex hull and calipers) once per compartment, on the label image relabelled to ``1..N``
(cp_measure's contract), and maps object ``i`` back to row ``label - 1``; absent objects are
NaN. ``Location_Center_X/Y`` are regionprops' centroid (what CellProfiler's Identify modules
record) and ``Number_Object_Number`` the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cp_measure.core.measureobjectsizeshape import get_feret, get_sizeshape, get_zernike
from skimage.segmentation import relabel_sequential

from hcsflow.features.shape import SHAPE_FEATURES as _FEATURES

#: Moment features cp_measure returns with ``calculate_advanced`` (hcsflow's ``advanced``).
_ADVANCED_PREFIXES = (
    "SpatialMoment_",
    "CentralMoment_",
    "NormalizedMoment_",
    "HuMoment_",
    "InertiaTensor",
)


def reference(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    zernike_degree: int = 9,
    advanced: bool = False,
) -> dict[str, np.ndarray]:
    """cp_measure's size/shape features, same names and rows as ``measure_shape``.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Unused.
    compartments : mapping of str to ndarray of int, shape (H, W)
    n : int
    channel_names : sequence of str
        Unused.
    zernike_degree, advanced :
        As in :func:`hcsflow.features.shape.measure_shape`.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
    """
    out: dict[str, np.ndarray] = {}
    for comp, labels in compartments.items():
        clean, forward, _inv = relabel_sequential(np.asarray(labels))
        original = np.asarray(forward.in_values, dtype=np.int64)  # sorted labels present
        rows = original[original > 0] - 1  # row of cp_measure's object i
        raw: dict[str, np.ndarray] = {}
        if len(rows):
            clean = clean.astype(np.int32)
            raw |= get_sizeshape(clean, None, calculate_advanced=advanced, new_features=False)
            raw |= get_zernike(clean, None, zernike_numbers=zernike_degree)
            raw |= get_feret(clean, None)
        names = [f"AreaShape_{key}" for key in _FEATURES]
        names += [
            f"AreaShape_Zernike_{zn}_{zm}"
            for zn in range(zernike_degree + 1)
            for zm in range(zn % 2, zn + 1, 2)
        ]
        if advanced:
            names += [f"AreaShape_{key}" for key in raw if key.startswith(_ADVANCED_PREFIXES)]
        sources = {name: name.removeprefix("AreaShape_") for name in names}
        sources |= {
            "Location_Center_X": "Center_X",
            "Location_Center_Y": "Center_Y",
        }
        for name, key in sources.items():
            col = np.full(n, np.nan)
            if len(rows):
                col[rows] = np.asarray(raw[key], dtype=np.float64)
            out[f"{comp}_{name}"] = col
        number = np.full(n, np.nan)
        number[rows] = rows + 1.0
        out[f"{comp}_Number_Object_Number"] = number
    return out
