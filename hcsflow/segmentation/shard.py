"""Segment the fields of one plate x shard: manifest rows in, label images and a QC table out.

This is what one workflow job does; it is a plain function so that a notebook can run it too.

Channels are chosen by role (``channels`` of the configuration): the ``nuclear`` channels form
the nuclear image, the ``cytoplasm`` and ``membrane`` channels the cytoplasm image (none:
nuclei-only assay). Several channels of one role are combined by
:func:`hcsflow.segmentation.preprocess.combine_channels` (each normalized, then a weighted
mean with ``weights[name]``, default 1). When illumination profiles are given, each raw channel
is corrected in memory (``(raw - dark) / flat``) before anything else.

The QC flags ``blank`` and ``saturated`` are decided on the *raw* images of the segmentation
channels (a corrected image of a blank field is no longer constant, and clipped pixels no longer
share one value): a blank nuclear channel gives no objects without running the network.

A field whose file cannot be read, or whose shape does not match its other channels or the
flat-field, raises :class:`hcsflow.io.BadImageError` naming the file, plate, well, site and
channel; with ``on_bad_image="drop"`` the field is skipped instead (no masks, no QC row) and
the error appended to ``dropped``. Whether a field is dropped depends on its files only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.io import BadImageError, ImagesRoot, MaskWriter, check_shape, read_field
from hcsflow.logutil import Progress
from hcsflow.segmentation.segmenter import SegmentationResult, Segmenter, field_flags

log = logging.getLogger(__name__)

#: Roles whose channels make the cytoplasm image.
CYTOPLASM_ROLES = ("cytoplasm", "membrane")

#: Columns of the per-field segmentation QC table, after the Metadata_ keys.
QC_COLUMNS = (
    "Count_Nuclei",
    "Count_Cells",
    "nuclei_outside_cells",
    "cells_without_nucleus",
    "small_nuclei",
    "dim_nuclei",
    "flags",
    "image_mpp",
    "mpp_estimated",
)


def segmenter_from_config(cfg: Mapping[str, Any]) -> Segmenter:
    """Build a :class:`Segmenter` from the ``segmentation`` section of the configuration."""
    return Segmenter.load(
        cfg.get("model"),
        device=cfg.get("device", "cpu"),
        method=cfg.get("method", "deep"),
        threads=cfg.get("threads"),
        tile_size=cfg.get("tile_size", 1024),
        tile_overlap=cfg.get("tile_overlap", 64),
        batch_size=cfg.get("batch_size", 4),
        expand_um=cfg.get("expand_um", 5.0),
        min_nucleus_area_um2=cfg.get("min_nucleus_area_um2", 15.0),
        nuclear_diameter_um=cfg.get("nuclear_diameter_um"),
        saturation_fraction=cfg.get("saturation_fraction", 0.05),
        empty_contrast=cfg.get("empty_contrast", 4.0),
        tta=bool(cfg.get("tta", False)),
    )


def channels_by_role(channels: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Names of the nuclear and of the cytoplasm/membrane channels.

    Raises ``ValueError`` (naming the ``channels`` configuration key) when no channel has the
    role ``nuclear``.
    """
    nuclear = [c["name"] for c in channels if c.get("role") == "nuclear"]
    cyto = [c["name"] for c in channels if c.get("role") in CYTOPLASM_ROLES]
    if not nuclear:
        raise ValueError(
            "config key 'channels': segmentation needs at least one channel with role 'nuclear'"
        )
    return nuclear, cyto


def _combine(images: list[np.ndarray], names: list[str], weights: Mapping[str, float]):
    if len(images) == 1:
        return images[0]
    from hcsflow.segmentation.preprocess import combine_channels

    return combine_channels(images, [float(weights.get(n, 1.0)) for n in names])


def load_illumination(paths: Mapping[str, str] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the illumination profiles ``{channel: path}`` as ``{channel: (flat, dark)}``."""
    if not paths:
        return {}
    from hcsflow import illumination

    return {ch: illumination.load(p) for ch, p in paths.items()}


def _check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ("stop", "drop"):
        raise ValueError(f"discovery.on_bad_image must be 'stop' or 'drop', got {on_bad_image!r}")


def read_corrected(
    row: Mapping[str, Any],
    names: Sequence[str],
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]],
    root: ImagesRoot = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read a field's channels and correct those with a profile.

    Parameters
    ----------
    row : mapping
        The field's manifest row.
    names : sequence of str
        Channels to read.
    illumination : mapping of channel name to (flat, dark)
        Profiles of shape (H, W).
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<ch>`` is relative to (:func:`hcsflow.io.field_paths`).

    Returns
    -------
    raw : ndarray of shape (C, H, W)
        The channels as stored.
    corrected : list of ndarray of shape (H, W)
        Float32 where a profile was applied, else the raw channel.

    Raises
    ------
    BadImageError
        A file that cannot be read, or whose shape differs from the field's other channels or
        from its flat-field; naming the file, plate, well, site and channel.
    """
    from hcsflow.illumination import correct

    stack = read_field(row, list(names), root)
    imgs = []
    for k, name in enumerate(names):
        img = stack[k]
        if name in illumination:
            flat, dark = illumination[name]
            check_shape(img, np.shape(flat), row, name, f"the {name} flat-field", root)
            img = correct(img, flat, dark)
        imgs.append(img)
    return stack, imgs


def _read_or_skip(
    row: Mapping[str, Any],
    names: Sequence[str],
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]],
    root: ImagesRoot,
    on_bad_image: str,
    dropped: list[BadImageError] | None,
    what: str,
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """:func:`read_corrected`, or None for a bad field when ``on_bad_image`` is ``drop``.

    The skipped field is logged as ``what`` and its error appended to ``dropped`` (if given);
    with ``stop`` the :class:`~hcsflow.io.BadImageError` propagates.
    """
    try:
        return read_corrected(row, names, illumination, root)
    except BadImageError as exc:
        if on_bad_image == "stop":
            raise
        log.warning("%s (discovery.on_bad_image: drop): %s", what, exc)
        if dropped is not None:
            dropped.append(exc)
        return None


def _segmentation_images(
    imgs: list[np.ndarray],
    nuc_names: list[str],
    cyto_names: list[str],
    weights: Mapping[str, float],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The nuclear and cytoplasm images (each of shape (H, W)) from a field's channels, the
    nuclear channels first; the cytoplasm image is None without cytoplasm channels."""
    nuc = _combine(imgs[: len(nuc_names)], nuc_names, weights)
    cyto = _combine(imgs[len(nuc_names) :], cyto_names, weights) if cyto_names else None
    return nuc, cyto


def _raw_flags(
    stack: np.ndarray, names: list[str], nuc_names: list[str], saturation_fraction: float
) -> list[str]:
    """QC flags of a field decided on its raw channels, shape (C, H, W): ``saturated`` if any
    channel is, ``blank`` if a nuclear channel is."""
    flags = set()
    for k, name in enumerate(names):
        f = field_flags(stack[k], saturation_fraction)
        if "saturated" in f:
            flags.add("saturated")
        if "blank" in f and name in nuc_names:
            flags.add("blank")
    return sorted(flags)


def _qc_record(row: Mapping[str, Any], res: SegmentationResult) -> dict[str, Any]:
    """A field's row of the QC table (logged at debug level with the timings)."""
    rec = {
        "Metadata_Plate": str(row["Metadata_Plate"]),
        "Metadata_Well": str(row["Metadata_Well"]),
        "Metadata_Site": int(row["Metadata_Site"]),
    }
    rec.update(res.qc_record())
    log.debug(
        "%s %s s%d: %d cells, flags [%s], network %.2f s, post-processing %.2f s",
        rec["Metadata_Plate"],
        rec["Metadata_Well"],
        rec["Metadata_Site"],
        rec["Count_Cells"],
        rec["flags"],
        res.timings.get("network", 0.0),
        res.timings.get("postprocess", 0.0),
    )
    return rec


def _qc_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The QC records as a table with the columns and types of :data:`QC_COLUMNS`."""
    qc = pd.DataFrame.from_records(
        records, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", *QC_COLUMNS]
    )
    return qc.astype(
        {
            "Metadata_Site": "int64",
            **{c: "int64" for c in QC_COLUMNS[:6]},
            "image_mpp": "float64",
            "mpp_estimated": "bool",
        }
    )


def segment_fields(
    manifest: pd.DataFrame,
    channels: Sequence[Mapping[str, Any]],
    segmenter: Segmenter,
    image_mpp: float | None,
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    weights: Mapping[str, float] | None = None,
    fields_per_batch: int = 4,
    on_bad_image: str = "stop",
    dropped: list[BadImageError] | None = None,
    root: ImagesRoot = None,
    masks_out: MaskWriter | None = None,
) -> tuple[dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], pd.DataFrame]:
    """Segment every field of a manifest.

    Parameters
    ----------
    manifest : DataFrame
        Rows of one plate x shard (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
        ``PathName_<ch>``, ``FileName_<ch>``).
    channels : sequence of dict
        The configuration's channels (``name``, ``id``, ``role``).
    segmenter : Segmenter
    image_mpp : float or None
        Pixel size of the raw images; None estimates it per field.
    illumination : mapping of channel name to (flat, dark), optional
        Profiles of shape (H, W) to correct the raw channels with.
    weights : mapping of channel name to float, optional
        Weights of the channels combined within one role.
    fields_per_batch : int
        Fields whose tiles go through the network together.
    on_bad_image : {"stop", "drop"}
        A field with a file that cannot be read or has the wrong shape: ``stop`` raises
        :class:`~hcsflow.io.BadImageError`; ``drop`` skips the field (no masks, no QC row).
    dropped : list, optional
        With ``drop``, the errors of skipped fields are appended here (one per field, the
        first bad file).
    root : path, mapping of plate to path, or None
        The plate's image folder, which ``PathName_<ch>`` is relative to
        (:func:`hcsflow.io.field_paths`).
    masks_out : MaskWriter, optional
        Each field's masks are added to this open archive as soon as they are made and not
        kept, so that memory does not grow with the number of fields (the returned ``masks``
        is then empty).

    Returns
    -------
    masks : dict of (well, site) to (nuclei, cells)
        uint32 label images of shape (H, W); empty when ``masks_out`` is given.
    qc : DataFrame
        One row per field: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and
        :data:`QC_COLUMNS`, sorted by well and site.

    Raises
    ------
    BadImageError
        With ``on_bad_image="stop"``, naming the file, plate, well, site and channel.
    """
    _check_on_bad_image(on_bad_image)
    nuc_names, cyto_names = channels_by_role(channels)
    names = nuc_names + cyto_names
    illumination = dict(illumination or {})
    weights = dict(weights or {})
    if fields_per_batch < 1:
        raise ValueError(f"fields_per_batch must be >= 1, got {fields_per_batch}")
    rows = manifest.sort_values(["Metadata_Well", "Metadata_Site"]).to_dict("records")
    masks: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    records = []
    progress = Progress(log, len(rows), "segmented")
    for start in range(0, len(rows), fields_per_batch):
        inputs, flags, chunk = [], [], []
        for row in rows[start : start + fields_per_batch]:
            read = _read_or_skip(row, names, illumination, root, on_bad_image, dropped, "skipped")
            if read is None:
                progress.advance()
                continue
            stack, imgs = read
            chunk.append(row)
            inputs.append(_segmentation_images(imgs, nuc_names, cyto_names, weights))
            flags.append(_raw_flags(stack, names, nuc_names, segmenter.saturation_fraction))
        if not chunk:
            continue
        results: list[SegmentationResult] = segmenter.predict_batch(inputs, image_mpp, flags)
        for row, res in zip(chunk, results, strict=True):
            key = (str(row["Metadata_Well"]), int(row["Metadata_Site"]))
            if masks_out is not None:
                masks_out.add(key[0], key[1], res.nuclei, res.cells)
            else:
                masks[key] = (res.nuclei, res.cells)
            records.append(_qc_record(row, res))
            progress.advance()
    return masks, _qc_table(records)


def render_plate_overlays(
    results: str,
    plate: str,
    manifest: pd.DataFrame,
    channels: Sequence[Mapping[str, Any]],
    out_png: str,
    n_fields: int = 4,
    crop: int = 512,
    illumination: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    weights: Mapping[str, float] | None = None,
    on_bad_image: str = "stop",
    root: ImagesRoot = None,
) -> pd.DataFrame:
    """Write a PNG of outlines on ``n_fields`` fields of a plate (central crops).

    Parameters
    ----------
    results : path
        Results folder holding ``masks/{plate}/``.
    plate : str
    manifest : DataFrame
        The plate's manifest.
    channels : sequence of dict
        The configuration's channels.
    out_png : path
        Destination.
    n_fields : int
        Fields shown, chosen by :func:`~hcsflow.segmentation.overlay.choose_fields`.
    crop : int
        Edge of the central crop shown per field, in pixels.
    illumination, weights, on_bad_image, root
        As in :func:`segment_fields`; with ``drop``, a chosen field whose files cannot be read
        is left out of the figure.

    Returns
    -------
    DataFrame
        The manifest rows shown.
    """
    _check_on_bad_image(on_bad_image)
    from hcsflow.io import read_masks
    from hcsflow.segmentation.overlay import (
        centre_crop,
        choose_fields,
        outline_overlay,
        save_overlay_figure,
    )

    nuc_names, cyto_names = channels_by_role(channels)
    names = nuc_names + cyto_names
    illumination = dict(illumination or {})
    weights = dict(weights or {})
    chosen = choose_fields(manifest, n_fields)
    panels = []
    shown = []
    for i, row in enumerate(chosen.to_dict("records")):
        read = _read_or_skip(row, names, illumination, root, on_bad_image, None, "overlay skipped")
        if read is None:
            continue
        shown.append(i)
        imgs = [np.asarray(img, dtype=np.float32) for img in read[1]]
        nuc, cyto = _segmentation_images(imgs, nuc_names, cyto_names, weights)
        well, site = str(row["Metadata_Well"]), int(row["Metadata_Site"])
        nuclei, cells = read_masks(results, plate, well, site)
        rgb = outline_overlay(
            centre_crop(nuc, crop),
            None if cyto is None else centre_crop(cyto, crop),
            centre_crop(nuclei, crop),
            centre_crop(cells, crop),
        )
        n_cells = int(np.unique(cells[cells > 0]).size)
        role = f" ({row['Metadata_Role']})" if "Metadata_Role" in row else ""
        panels.append((f"{well} s{site}{role}: {n_cells} cells", rgb))
    save_overlay_figure(panels, out_png, title=f"{plate}: cells (yellow), nuclei (magenta)")
    return chosen.iloc[shown].reset_index(drop=True)
