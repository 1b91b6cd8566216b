"""One field's cells -> one row of CellProfiler-class measurements per cell.

:func:`measure` pairs each cell with its nucleus, forms the three compartments CellProfiler
pipelines measure (``Cells``, ``Nuclei``, ``Cytoplasm`` = cell minus its nucleus) as label
images in which object ``k`` is output row ``k - 1``, and runs every measurement family on them
once (see :data:`FAMILIES`). Each family is vectorised over objects: one pass per image and
family, label-indexed reductions, no loop over cells.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.features._objects import COMPARTMENTS, centroids

#: family name -> (module, function); run in this order, which is the column order.
FAMILIES: dict[str, tuple[str, str]] = {
    "shape": ("hcsflow.features.shape", "measure_shape"),
    "intensity": ("hcsflow.features.intensity", "measure_intensity"),
    "texture": ("hcsflow.features.texture", "measure_texture"),
    "granularity": ("hcsflow.features.granularity", "measure_granularity"),
    "radial": ("hcsflow.features.radial", "measure_radial"),
    "correlation": ("hcsflow.features.correlation", "measure_correlation"),
    "neighbors": ("hcsflow.features.neighbors", "measure_neighbors"),
}

#: Boolean per-cell flags written beside the measurements (not features).
FLAG_COLUMNS: tuple[str, ...] = ("Metadata_Cells_NoNucleus", "Metadata_Cells_TouchesBorder")


@dataclass(frozen=True)
class MeasureParams:
    """Which families run and their options.

    Attributes
    ----------
    families : tuple of str
        Names from :data:`FAMILIES`, run in the order of :data:`FAMILIES`.
    options : mapping of family name to dict
        Keyword options of each family function (e.g. ``{"texture": {"scales": (3,)}}``).
    """

    families: tuple[str, ...] = tuple(FAMILIES)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown feature families {unknown}; choose from {sorted(FAMILIES)}")
        extra = sorted(set(self.options) - set(FAMILIES))
        if extra:
            raise ValueError(f"options given for unknown feature families {extra}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MeasureParams:
        """Build from the configuration section ``features`` (see config.schema.yaml)."""
        options = {
            "shape": {"zernike_degree": int(cfg["zernike_degree"])},
            "texture": {
                "scales": tuple(int(s) for s in cfg["texture_scales"]),
                "gray_levels": int(cfg["texture_gray_levels"]),
            },
            "granularity": {
                "subsample_size": float(cfg["granularity_subsample_size"]),
                "image_sample_size": float(cfg["granularity_image_sample_size"]),
                "element_size": int(cfg["granularity_element_size"]),
                "spectrum_length": int(cfg["granularity_spectrum_length"]),
            },
            "radial": {"bin_count": int(cfg["radial_bins"])},
            "correlation": {
                "manders_threshold": float(cfg["manders_threshold"]),
                "costes": bool(cfg["costes"]),
            },
            "neighbors": {"distance": int(cfg["neighbors_distance"])},
        }
        return cls(families=tuple(f for f in FAMILIES if f in cfg["families"]), options=options)


def pair_nuclei(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Relabel cells ``1..n`` in label order and give each cell the nucleus it holds most of.

    Parameters
    ----------
    nuclei, cells : ndarray of int, shape (H, W)
        Label images, 0 is background. With hcsflow's masks cell ``k`` contains nucleus ``k``;
        any other pairing is found by overlap: a cell's nucleus is the nuclear object with most
        pixels inside it, restricted to the cell.

    Returns
    -------
    cells_k : ndarray of int32, shape (H, W)
        Cells relabelled ``1..n`` in the order of their original labels.
    nuclei_k : ndarray of int32, shape (H, W)
        The nucleus of cell ``k`` (within it) labelled ``k``; 0 elsewhere.
    object_numbers : ndarray of int64, shape (n,)
        The original cell label of each row.
    """
    cells = np.asarray(cells)
    nuclei = np.asarray(nuclei)
    object_numbers = np.unique(cells)
    object_numbers = object_numbers[object_numbers > 0].astype(np.int64)
    n = len(object_numbers)
    lut = np.zeros(int(cells.max(initial=0)) + 1, dtype=np.int32)
    lut[object_numbers] = np.arange(1, n + 1, dtype=np.int32)
    cells_k = lut[cells]
    both = (cells_k > 0) & (nuclei > 0)
    if not both.any():
        return cells_k, np.zeros_like(cells_k), object_numbers
    c = cells_k[both].astype(np.int64)
    u = nuclei[both].astype(np.int64)
    key = c * (int(u.max()) + 1) + u
    pairs, overlap = np.unique(key, return_counts=True)
    pc, pu = np.divmod(pairs, int(u.max()) + 1)
    # per cell, the nucleus of largest overlap (ties: the smaller nuclear label)
    order = np.lexsort((pu, -overlap, pc))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pc[order][1:] != pc[order][:-1]
    chosen = np.zeros(n + 1, dtype=np.int64)
    chosen[pc[order][first]] = pu[order][first]
    nuclei_k = np.where(both & (nuclei == chosen[cells_k]), cells_k, 0).astype(np.int32)
    return cells_k, nuclei_k, object_numbers


def compartments_of(cells_k: np.ndarray, nuclei_k: np.ndarray) -> dict[str, np.ndarray]:
    """The three compartments as label images (object k = row k - 1), in output order."""
    return {
        "Cells": cells_k,
        "Nuclei": nuclei_k,
        "Cytoplasm": np.where(nuclei_k > 0, 0, cells_k).astype(np.int32),
    }


def _touches_border(cells_k: np.ndarray, n: int) -> np.ndarray:
    edge = np.concatenate([cells_k[0], cells_k[-1], cells_k[:, 0], cells_k[:, -1]])
    out = np.zeros(n + 1, dtype=bool)
    out[edge] = True
    return out[1:]


def _check_inputs(
    image: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, channel_names: Sequence[str]
) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if len(channel_names) != image.shape[0]:
        raise ValueError(
            f"image has {image.shape[0]} channels but {len(channel_names)} channel names "
            f"were given: {list(channel_names)}"
        )
    if len(set(channel_names)) != len(channel_names):
        raise ValueError(f"channel names must be unique, got {list(channel_names)}")
    for name, lab in (("nuclei", nuclei), ("cells", cells)):
        if lab.shape != image.shape[1:]:
            raise ValueError(
                f"{name} mask has shape {lab.shape}, the image {image.shape[1:]} (H, W)"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{name} mask must be an integer label image, got {lab.dtype}")


def measure(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    channel_names: Sequence[str],
    params: MeasureParams | None = None,
) -> pd.DataFrame:
    """CellProfiler-class measurements of every cell of one field.

    Parameters
    ----------
    image : ndarray of shape (C, H, W)
        The field's channels, illumination-corrected, in CellProfiler's units (the raw value
        divided by the file type's full range, so mostly within [0, 1]).
    nuclei, cells : ndarray of int, shape (H, W)
        Nuclear and whole-cell label images (0 = background). See :func:`pair_nuclei`.
    channel_names : sequence of str
        C channel names used in the column names (``DNA``, ``Mito``, ...).
    params : MeasureParams, optional
        Families and their options; default: every family at CellProfiler's defaults.

    Returns
    -------
    DataFrame
        One row per cell in the order of the cell labels: ``Metadata_ObjectNumber`` (the cell
        label), ``Metadata_Cells_Location_Center_X``/``_Y`` (pixels), the flags
        :data:`FLAG_COLUMNS` (a cell without a nucleus has NaN in every ``Nuclei_*`` column
        and ``Cytoplasm`` equal to the whole cell), then ``<Compartment>_<Module>_<Feature>``
        columns (float64) as CellProfiler 4 names them. A field without cells gives an empty
        table with the same columns.
    """
    params = params or MeasureParams()
    image = np.asarray(image)
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    _check_inputs(image, nuclei, cells, channel_names)
    img = image.astype(np.float32, copy=False)
    cells_k, nuclei_k, object_numbers = pair_nuclei(nuclei, cells)
    n = len(object_numbers)
    comps = compartments_of(cells_k, nuclei_k)
    assert tuple(comps) == COMPARTMENTS
    columns: dict[str, np.ndarray] = {}
    for family, (module, func) in FAMILIES.items():
        if family not in params.families:
            continue
        fn = getattr(importlib.import_module(module), func)
        out = fn(img, comps, n, list(channel_names), **dict(params.options.get(family, {})))
        for name, values in out.items():
            if name in columns:
                raise RuntimeError(f"feature {name} written by two families")
            columns[name] = np.asarray(values, dtype=np.float64)
    # CellProfiler's object number is the label: give back the caller's cell labels
    for comp in COMPARTMENTS:
        key = f"{comp}_Number_Object_Number"
        if key in columns:
            columns[key] = np.where(np.isnan(columns[key]), np.nan, object_numbers)
    has_nucleus = np.bincount(nuclei_k.ravel(), minlength=n + 1)[1:] > 0
    _, centres = centroids(cells_k, n)
    meta = pd.DataFrame(
        {
            "Metadata_ObjectNumber": object_numbers,
            "Metadata_Cells_Location_Center_X": centres[:, 1],
            "Metadata_Cells_Location_Center_Y": centres[:, 0],
            "Metadata_Cells_NoNucleus": ~has_nucleus,
            "Metadata_Cells_TouchesBorder": _touches_border(cells_k, n),
        }
    )
    feats = pd.DataFrame(columns, index=meta.index) if columns else pd.DataFrame(index=meta.index)
    return pd.concat([meta, feats], axis=1)
