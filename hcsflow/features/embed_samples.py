"""Training crops of a screen's cells: sampling per field and sample files.

Crops are sampled per field with :func:`sample_crops` (a deterministic subset of the field's
cells, interior cells first), written per shard with :func:`write_sample` (npz: ``crops``
float16 (N, C, S, S) and one array per metadata column, no pickles) and read back with
:func:`read_samples`. Labels are the sorted unique ``Metadata_Treatment`` strings
(:func:`treatment_labels`). :mod:`hcsflow.features.embed_train` trains on them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.features.crops import cell_centres, crop_origins, gather_crops, pad_image

__all__ = [
    "SAMPLE_COLUMNS",
    "SAMPLE_FORMAT",
    "read_samples",
    "sample_crops",
    "treatment_labels",
    "treatment_name",
    "write_sample",
]

#: Metadata columns every sample file holds (one row per crop).
SAMPLE_COLUMNS = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_ObjectNumber",
    "Metadata_Treatment",
    "Metadata_Role",
)

#: ``format`` of sample files.
SAMPLE_FORMAT = "hcsflow-crops-1"


def _seed_sequence(seed: int | Sequence[int]) -> np.random.SeedSequence:
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def sample_crops(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    n_max: int,
    rng_seed: int | Sequence[int],
    crop_px: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of a deterministic random subset of a field's cells, for training.

    Cells with pixels are shuffled with ``rng_seed``; cells whose crop lies wholly inside the
    field come first, border cells only fill up when there are fewer than ``n_max`` others.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        Illumination-corrected field.
    nuclei, cells : ndarray of int, shape (H, W)
        Labels; cell ``k`` contains nucleus ``k``.
    n_max : int
        Most crops to return.
    rng_seed : int or sequence of int
        Seed of the choice (e.g. ``(plate_hash, well_index, site)``).
    crop_px : int
        Crop edge in pixels (e.g. ``crop_size_px(crop_um, image_mpp)``).

    Returns
    -------
    crops : ndarray of float16, shape (k, C, crop_px, crop_px), ``k <= n_max``
        Values beyond float16's range are clipped to it.
    object_numbers : ndarray of int64, shape (k,)
        Cell labels of the crops, ascending.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if int(n_max) < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    n = int(np.max(cells, initial=0))
    centres = cell_centres(nuclei, cells, n)
    present = np.flatnonzero(np.isfinite(centres).all(axis=1))
    _, _, border = crop_origins(centres[present], crop_px, image.shape[1:])
    order = np.random.default_rng(_seed_sequence(rng_seed)).permutation(present.size)
    order = order[np.argsort(border[order], kind="stable")]  # interior cells first
    chosen = np.sort(present[order[: int(n_max)]])
    crops, _ = gather_crops(pad_image(image, crop_px), centres[chosen], crop_px, image.shape[1:])
    lim = float(np.finfo(np.float16).max)
    crops = np.clip(crops, -lim, lim).astype(np.float16)
    return crops, (chosen + 1).astype(np.int64)


def treatment_name(compound: str, dose_um: float) -> str:
    """A treatment's label: ``"<compound>@<dose>"`` (dose in µM, shortest form), e.g. ``"DMSO@0"``."""
    return f"{compound}@{float(dose_um):g}"


def treatment_labels(treatments: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer labels of treatment strings: their index among the sorted unique strings.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
    classes : list of str
    """
    classes, labels = np.unique(np.asarray(treatments, dtype=str), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), [str(c) for c in classes]


def write_sample(
    path: str | os.PathLike[str],
    crops: np.ndarray,
    metadata: pd.DataFrame,
    *,
    image_mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """Write crops and their metadata to an npz sample file (atomically).

    Parameters
    ----------
    path : path-like
    crops : ndarray, shape (N, C, S, S)
        Stored as float16.
    metadata : DataFrame
        ``N`` rows with at least :data:`SAMPLE_COLUMNS`; other columns are kept. Object
        columns are stored as strings.
    image_mpp : float, optional
        Pixel size of the crops (µm); recorded, and checked for equality across files.
    channel_names : sequence of str, optional
        ``C`` channel names; recorded and checked likewise.

    Returns
    -------
    Path
    """
    from hcsflow.io import atomic_path

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"{path}: crops must have shape (N, C, S, S), got {crops.shape}")
    if len(metadata) != crops.shape[0]:
        raise ValueError(f"{path}: {crops.shape[0]} crops but {len(metadata)} metadata rows")
    missing = [c for c in SAMPLE_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(f"{path}: metadata lacks columns {missing}")
    if channel_names is not None and len(channel_names) != crops.shape[1]:
        raise ValueError(f"{path}: {len(channel_names)} channel names for {crops.shape[1]}")
    arrays: dict[str, np.ndarray] = {}
    for i, col in enumerate(metadata.columns):
        values = metadata[col].to_numpy()
        if values.dtype.kind not in "biuf":
            values = values.astype(str)
        arrays[f"meta_{i:03d}"] = values
    attrs = {
        "format": SAMPLE_FORMAT,
        "columns": [str(c) for c in metadata.columns],
        "image_mpp": None if image_mpp is None else float(image_mpp),
        "channel_names": None if channel_names is None else [str(c) for c in channel_names],
        "crop_px": int(crops.shape[2]),
    }
    lim = float(np.finfo(np.float16).max)
    data = np.clip(crops, -lim, lim).astype(np.float16)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, crops=data, attrs=np.array(json.dumps(attrs)), **arrays)
    return Path(path)


def _npz_array_shape(z: Any, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` of an open npz file, read from its header only."""
    with z.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(v) for v in shape)


def _read_sample_header(path: Path) -> tuple[dict[str, Any], pd.DataFrame, tuple[int, ...]]:
    """Attributes, metadata and crop shape of a sample file (crops not loaded)."""
    if not path.is_file():
        raise ValueError(f"sample file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            attrs = json.loads(str(z["attrs"]))
            if attrs.get("format") != SAMPLE_FORMAT:
                raise ValueError(f"sample file {path}: format {attrs.get('format')!r}")
            cols = {c: z[f"meta_{i:03d}"] for i, c in enumerate(attrs["columns"])}
            shape = _npz_array_shape(z, "crops")
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"sample file {path}: cannot read ({exc})") from exc
    if len(shape) != 4 or any(len(v) != shape[0] for v in cols.values()):
        raise ValueError(f"sample file {path}: crops {shape} do not match the metadata")
    return attrs, pd.DataFrame(cols), shape


def read_samples(
    paths: Sequence[str | os.PathLike[str]],
    max_crops: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Read and concatenate sample files written by :func:`write_sample`.

    Parameters
    ----------
    paths : sequence of path-like
    max_crops : int, optional
        Keep a seeded random subset of this many crops (in file and row order), reading one
        file at a time, so that memory stays bounded whatever the number of files.
    seed : int
        Seed of the subset.

    Returns
    -------
    crops : ndarray of float16, shape (N, C, S, S)
    metadata : DataFrame
        ``N`` rows, the files' columns (plus ``Metadata_SampleFile``); ``attrs`` holds
        ``image_mpp``, ``channel_names``, ``crop_px``, ``files`` and ``n_available``.

    Raises
    ------
    ValueError
        No paths, or a file that is not a sample file or disagrees with the first on crop
        shape, channels or pixel size (the message names it).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_samples: no sample files given")
    ref: dict[str, Any] = {}
    frames, shapes = [], []
    for path in paths:
        attrs, df, shape = _read_sample_header(path)
        if not frames:
            ref = dict(attrs)
        else:
            if shape[1:] != shapes[0][1:]:
                raise ValueError(
                    f"sample file {path}: crops of shape {shape[1:]}, "
                    f"expected {shapes[0][1:]} as in {paths[0]}"
                )
            for key in ("channel_names", "image_mpp"):
                if attrs.get(key) is not None and ref.get(key) is not None:
                    if attrs[key] != ref[key]:
                        raise ValueError(
                            f"sample file {path}: {key} {attrs[key]} differs from "
                            f"{ref[key]} of {paths[0]}"
                        )
                elif ref.get(key) is None:
                    ref[key] = attrs.get(key)
        df["Metadata_SampleFile"] = str(path)
        frames.append(df)
        shapes.append(shape)
    sizes = np.array([s[0] for s in shapes])
    total = int(sizes.sum())
    keep = np.arange(total)
    if max_crops is not None and total > int(max_crops):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A3]))
        keep = np.sort(rng.choice(total, int(max_crops), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    crops = np.empty((keep.size, *shapes[0][1:]), dtype=np.float16)
    meta_parts = []
    filled = 0
    for i, path in enumerate(paths):
        rows = keep[(keep >= starts[i]) & (keep < starts[i + 1])] - starts[i]
        if rows.size == 0:
            continue
        with np.load(path, allow_pickle=False) as z:
            data = z["crops"]
        crops[filled : filled + rows.size] = data[rows]
        del data
        filled += rows.size
        meta_parts.append(frames[i].iloc[rows])
    meta = pd.concat(meta_parts, ignore_index=True)
    meta.attrs = {
        "image_mpp": ref.get("image_mpp"),
        "channel_names": ref.get("channel_names"),
        "crop_px": int(shapes[0][-1]),
        "files": [str(p) for p in paths],
        "n_available": total,
    }
    return crops, meta
