"""Measure the fields of one plate x shard: manifest rows + masks in, per-cell table out.

This is what one workflow job does (rule ``measure``); it is a plain function so that a
notebook can run it too. For each field, in well and site order: the raw channels are read,
their image quality is measured, each channel is illumination-corrected in memory
(``(raw - dark) / flat``) and put in CellProfiler's units (divided by the file type's full
range: 65535 for 16-bit files), the field's masks are read from the shard's archive, and
:func:`hcsflow.features.measure` (and, when an embedder is given,
:meth:`hcsflow.features.Embedder.embed`) run on it. Only one field's images are in memory at a
time, so memory is bounded by the field, whatever the shard or plate size.

A field whose file cannot be read, or whose shape does not match its other channels or the
flat-field, raises :class:`hcsflow.io.BadImageError` naming the file, plate, well, site and
channel; with ``on_bad_image="drop"`` it is skipped instead (it has no cells and no quality
row) and the error appended to ``dropped``. Whether a field is dropped depends on its files
only, so outputs do not depend on order or timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hcsflow.features.core import MeasureParams, measure, pair_nuclei
from hcsflow.features.quality import field_quality
from hcsflow.io import BadImageError, ImagesRoot, check_shape, mask_key, read_field
from hcsflow.logutil import Progress

if TYPE_CHECKING:
    from hcsflow.features.embed import Embedder

log = logging.getLogger(__name__)

#: Manifest columns that are not copied into the per-cell table.
_FILE_PREFIXES = ("FileName_", "PathName_")


def intensity_scale(dtype: np.dtype) -> float:
    """Factor that puts a raw image of this type in CellProfiler's units (1 / full range)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


@dataclass(frozen=True)
class Field:
    """One field read for measurement.

    Attributes
    ----------
    row : dict
        Its manifest row.
    raw : ndarray of shape (C, H, W)
        The channels as stored.
    corrected : ndarray of shape (C, H, W), float32
        Illumination-corrected, in raw units.
    nuclei, cells : ndarray of shape (H, W)
        Label images from the shard's mask archive.
    where : str
        ``plate P well W site S``, for messages.
    """

    row: dict[str, Any]
    raw: np.ndarray
    corrected: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    where: str


def iter_fields(
    manifest: pd.DataFrame,
    channel_names: Sequence[str],
    masks_paths: Sequence[str | Path],
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    on_bad_image: str = "stop",
    dropped: list[BadImageError] | None = None,
    root: ImagesRoot = None,
) -> Iterator[Field]:
    """Read the fields of a manifest one at a time, in well and site order, with their masks.

    Parameters
    ----------
    manifest : DataFrame
        Rows of the fields (``Metadata_*``, ``PathName_<ch>``, ``FileName_<ch>``).
    channel_names : sequence of str
        Channels to read.
    masks_paths : sequence of path
        Mask archives (:func:`hcsflow.io.write_masks`) holding the fields' masks.
    illumination : mapping of channel name to (flat, dark), optional
        Profiles of shape (H, W); channels not listed are left uncorrected.
    on_bad_image : {"stop", "drop"}
        A field with a file that cannot be read or has the wrong shape: ``stop`` raises;
        ``drop`` skips it (before its masks are looked up: segmentation skipped it too).
    dropped : list, optional
        With ``drop``, the errors of skipped fields are appended here.
    root : path, mapping of plate to path, or None
        The plate's image folder, which ``PathName_<ch>`` is relative to
        (:func:`hcsflow.io.field_paths`).

    Yields
    ------
    Field

    Raises
    ------
    BadImageError
        With ``on_bad_image="stop"``, naming the file, plate, well, site and channel.
    """
    if on_bad_image not in ("stop", "drop"):
        raise ValueError(f"discovery.on_bad_image must be 'stop' or 'drop', got {on_bad_image!r}")
    from hcsflow.illumination import correct

    names = list(channel_names)
    illumination = dict(illumination or {})
    unknown = sorted(set(illumination) - set(names))
    if unknown:
        raise ValueError(f"illumination profiles given for unknown channels {unknown}")
    rows = manifest.sort_values(["Metadata_Well", "Metadata_Site"]).to_dict("records")
    with contextlib.ExitStack() as stack:
        members: dict[str, Any] = {}
        for path in map(Path, masks_paths):
            with zipfile.ZipFile(path) as archive:
                listed = archive.namelist()
            npz = stack.enter_context(np.load(path, allow_pickle=False))
            for name in listed:
                members[name.removesuffix(".npy")] = (npz, path)
        for i, row in enumerate(rows, start=1):
            well, site = str(row["Metadata_Well"]), int(row["Metadata_Site"])
            where = f"plate {row['Metadata_Plate']} well {well} site {site}"
            try:
                raw = read_field(row, names, root)
                for ch in illumination:
                    flat = illumination[ch][0]
                    check_shape(
                        raw[names.index(ch)], np.shape(flat), row, ch, f"the {ch} flat-field", root
                    )
            except BadImageError as exc:
                if on_bad_image == "stop":
                    raise
                log.warning("skipped (discovery.on_bad_image: drop): %s", exc)
                if dropped is not None:
                    dropped.append(exc)
                continue
            keys = [mask_key(well, site, k) for k in ("nuclei", "cells")]
            if any(k not in members for k in keys):
                raise ValueError(f"{where}: no masks in {', '.join(map(str, masks_paths))}")
            nuclei, cells = (members[k][0][k] for k in keys)
            if nuclei.shape != raw.shape[1:] or cells.shape != raw.shape[1:]:
                raise ValueError(
                    f"{where}: masks of shape {cells.shape} ({members[keys[1]][1]}) do not "
                    f"match the images {raw.shape[1:]}"
                )
            corrected = np.empty(raw.shape, dtype=np.float32)
            for k, ch in enumerate(names):
                if ch in illumination:
                    flat, dark = illumination[ch]
                    try:
                        correct(raw[k], flat, dark, out=corrected[k])
                    except ValueError as exc:
                        raise ValueError(f"{where} channel {ch}: {exc}") from exc
                else:
                    corrected[k] = raw[k]
            log.debug("%s (%d of %d fields)", where, i, len(rows))
            yield Field(row, raw, corrected, nuclei, cells, where)


def measure_fields(
    manifest: pd.DataFrame,
    channel_names: Sequence[str],
    masks_path: str | Path,
    *,
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    params: MeasureParams | None = None,
    embedder: Embedder | None = None,
    image_mpp: float = 0.65,
    dtype: str = "float32",
    on_bad_image: str = "stop",
    dropped: list[BadImageError] | None = None,
    root: ImagesRoot = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell measurements and per-field image quality of the fields of a manifest.

    Parameters
    ----------
    manifest : DataFrame
        Rows of one plate x shard (``Metadata_*``, ``PathName_<ch>``, ``FileName_<ch>``).
    channel_names : sequence of str
        The channels to measure, as named in the manifest's file columns.
    masks_path : path
        The shard's mask archive (:func:`hcsflow.io.write_masks`).
    illumination : mapping of channel name to (flat, dark), optional
        Profiles of shape (H, W); channels not listed are left uncorrected.
    params : MeasureParams, optional
        Measurement families and options.
    embedder : Embedder, optional
        Adds ``Cells_Embedding_0000``... and the flag ``Metadata_Cells_CropPadded``.
    image_mpp : float
        Micrometres per pixel (the embedder's crop size is physical).
    dtype : {"float32", "float64"}
        Type of the measurement and embedding columns in the output.
    on_bad_image, dropped
        As in :func:`iter_fields`: a dropped field has no cells and no quality row.
    root : path, mapping of plate to path, or None
        The plate's image folder, which ``PathName_<ch>`` is relative to
        (:func:`hcsflow.io.field_paths`).

    Returns
    -------
    cells : DataFrame
        One row per cell: the manifest's ``Metadata_*`` columns, ``Metadata_ObjectNumber``,
        ``Metadata_Cells_Location_Center_X/Y``, flags, measurements, embeddings.
    quality : DataFrame
        One row per field: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
        ``Count_Cells``, ``Count_Nuclei``, ``Count_CellsWithoutNucleus`` and
        ``ImageQuality_*`` per channel.
    """
    names = list(channel_names)
    meta_cols = [c for c in manifest.columns if c.startswith("Metadata_")]
    tables: list[pd.DataFrame] = []
    quality: list[dict[str, Any]] = []
    progress = Progress(log, len(manifest), "measured")
    fields = iter_fields(
        manifest,
        names,
        [masks_path],
        illumination,
        on_bad_image=on_bad_image,
        dropped=dropped,
        root=root,
    )
    for f in fields:
        scale = np.float32(intensity_scale(f.raw.dtype))
        table = measure(f.corrected * scale, f.nuclei, f.cells, names, params)
        if embedder is not None:
            table = _add_embeddings(table, embedder, f.corrected, f.nuclei, f.cells, image_mpp)
        head = pd.DataFrame({c: [f.row[c]] * len(table) for c in meta_cols}, index=table.index)
        tables.append(pd.concat([head, table], axis=1))
        rec = {c: f.row[c] for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")}
        rec["Count_Cells"] = len(table)
        rec["Count_Nuclei"] = int((~table["Metadata_Cells_NoNucleus"]).sum())
        rec["Count_CellsWithoutNucleus"] = int(table["Metadata_Cells_NoNucleus"].sum())
        rec.update(field_quality(f.raw, names))
        quality.append(rec)
        progress.advance()
    if tables:
        cells_df = pd.concat(tables, ignore_index=True)
    else:
        cells_df = _empty_table(manifest[meta_cols], names, params, embedder)
    feature_cols = [c for c in cells_df.columns if not c.startswith("Metadata_")]
    cells_df[feature_cols] = cells_df[feature_cols].astype(dtype)
    qual = pd.DataFrame.from_records(quality)
    if qual.empty:
        qual = pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])
    return cells_df, qual


def _add_embeddings(
    table: pd.DataFrame,
    embedder: Embedder,
    corrected: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    image_mpp: float,
) -> pd.DataFrame:
    """``table`` with the flag ``Metadata_Cells_CropPadded`` and the embedding columns."""
    cells_k, nuclei_k, _ = pair_nuclei(nuclei, cells)
    emb, padded = embedder.embed(
        corrected, nuclei_k, cells_k, image_mpp, n=len(table), return_border=True
    )
    out = table.copy()
    out.insert(_flag_position(out), "Metadata_Cells_CropPadded", np.asarray(padded, dtype=bool))
    columns = embedder.feature_names(corrected.shape[0])
    emb_df = pd.DataFrame(emb, columns=columns, index=out.index)
    return pd.concat([out, emb_df], axis=1)


def _flag_position(table: pd.DataFrame) -> int:
    return table.columns.get_loc("Metadata_Cells_TouchesBorder") + 1


def _empty_table(
    meta: pd.DataFrame,
    names: list[str],
    params: MeasureParams | None,
    embedder: Embedder | None,
) -> pd.DataFrame:
    """The per-cell table of a shard without cells: every column, no rows."""
    empty = measure(
        np.zeros((len(names), 4, 4), np.float32),
        np.zeros((4, 4), np.int32),
        np.zeros((4, 4), np.int32),
        names,
        params,
    )
    if embedder is not None:
        empty.insert(_flag_position(empty), "Metadata_Cells_CropPadded", pd.Series([], dtype=bool))
        for c in embedder.feature_names(len(names)):
            empty[c] = pd.Series([], dtype=np.float32)
    head = meta.iloc[:0].reset_index(drop=True)
    return pd.concat([head, empty], axis=1)


def sample_fields(
    manifest: pd.DataFrame,
    channel_names: Sequence[str],
    masks_paths: Sequence[str | Path],
    *,
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    crop_um: float = 40.0,
    image_mpp: float = 0.65,
    cells_per_field: int = 4,
    seed: int = 0,
    on_bad_image: str = "stop",
    dropped: list[BadImageError] | None = None,
    root: ImagesRoot = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """A deterministic sample of cell crops of a plate, for training an embedder.

    Parameters
    ----------
    manifest : DataFrame
        The plate's fields.
    channel_names : sequence of str
        Channels of the crops.
    masks_paths : sequence of path
        The plate's mask archives.
    illumination : mapping of channel name to (flat, dark), optional
        Profiles applied before cropping (crops are in corrected raw units).
    crop_um, image_mpp : float
        Crop side in micrometres, and the pixel size.
    cells_per_field : int
        Cells drawn per field (all of them when a field has fewer).
    seed : int
        Seed of the draw; each field's draw depends on the seed, plate, well and site only.
    on_bad_image, dropped, root
        As in :func:`iter_fields`.

    Returns
    -------
    crops : ndarray of float16, shape (N, C, S, S)
    metadata : DataFrame
        One row per crop: ``Metadata_Plate``, ``_Well``, ``_Site``, ``_ObjectNumber``,
        ``Metadata_Role`` and ``Metadata_Treatment`` (``compound@dose``, the class of weakly
        supervised training).
    """
    from hcsflow.features.crops import crop_size_px
    from hcsflow.features.embed_train import sample_crops, treatment_name

    size = crop_size_px(crop_um, image_mpp)
    names = list(channel_names)
    crops, rows = [], []
    fields = iter_fields(
        manifest,
        names,
        masks_paths,
        illumination,
        on_bad_image=on_bad_image,
        dropped=dropped,
        root=root,
    )
    for f in fields:
        cells_k, nuclei_k, numbers = pair_nuclei(f.nuclei, f.cells)
        key = f"{seed}:{f.row['Metadata_Plate']}:{f.row['Metadata_Well']}:{f.row['Metadata_Site']}"
        field_seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        c, chosen = sample_crops(f.corrected, nuclei_k, cells_k, cells_per_field, field_seed, size)
        crops.append(c)
        treatment = treatment_name(
            f.row.get("Metadata_Compound", ""), f.row.get("Metadata_Dose", 0)
        )
        for k in np.asarray(chosen, dtype=np.int64):
            rows.append(
                {
                    "Metadata_Plate": f.row["Metadata_Plate"],
                    "Metadata_Well": f.row["Metadata_Well"],
                    "Metadata_Site": int(f.row["Metadata_Site"]),
                    "Metadata_ObjectNumber": int(numbers[k - 1]),
                    "Metadata_Treatment": treatment,
                    "Metadata_Role": f.row.get("Metadata_Role", ""),
                }
            )
    if crops:
        out = np.concatenate(crops).astype(np.float16)
    else:
        out = np.zeros((0, len(names), size, size), np.float16)
    return out, pd.DataFrame.from_records(rows)
