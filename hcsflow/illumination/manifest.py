"""Illumination from a manifest: sampling fields, estimating per channel, writing corrected
images."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.illumination.estimation import IlluminationResult, IlluminationWarning, correct, fit
from hcsflow.illumination.files import load
from hcsflow.io import BadImageError, ImagesRoot, atomic_path, field_paths


def sample_fields(manifest: pd.DataFrame, max_fields: int, seed: int = 0) -> pd.DataFrame:
    """A deterministic sample of up to ``max_fields`` fields of a manifest.

    Rows are first put in plate, well, site order, so the sample does not depend on the order
    of the manifest; then ``max_fields`` of them are drawn uniformly without replacement with a
    seeded generator and returned in that order.

    Parameters
    ----------
    manifest : DataFrame
        One row per field (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ...).
    max_fields : int
        Largest sample size (>= 1).
    seed : int
        Seed of the draw.
    """
    if max_fields < 1:
        raise ValueError(f"illumination.max_fields must be >= 1, got {max_fields}")
    keys = [k for k in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if k in manifest]
    ordered = manifest.sort_values(keys, kind="stable").reset_index(drop=True)
    if len(ordered) <= max_fields:
        return ordered
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ordered), size=max_fields, replace=False))
    return ordered.iloc[idx].reset_index(drop=True)


def estimate_from_manifest(
    manifest: pd.DataFrame,
    channel: str,
    method: str = "basic",
    *,
    max_fields: int = 200,
    seed: int = 0,
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    on_bad_image: str = "stop",
    root: ImagesRoot = None,
    **kwargs: Any,
) -> IlluminationResult:
    """Estimate one channel's flat-field and dark-field from a sample of a manifest's fields.

    Parameters
    ----------
    manifest : DataFrame
        Manifest rows (one plate, or several plates of a batch) with ``PathName_<channel>``
        and ``FileName_<channel>``.
    channel : str
        Channel name.
    method : str
        As in :func:`fit`.
    max_fields, seed : int
        Sample size and seed (:func:`sample_fields`).
    read : callable, optional
        Image reader; default :func:`hcsflow.io.read_image`.
    on_bad_image : {"stop", "drop"}
        A sampled file that cannot be read (the reader raises ``ValueError``) or whose shape
        differs from the first sampled field's: ``stop`` raises
        :class:`~hcsflow.io.BadImageError` naming the file, plate, well, site and channel;
        ``drop`` leaves the field out of the estimate and records it in the result's
        ``dropped`` (the sample itself is not redrawn, so it does not depend on which files
        are bad).
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<channel>`` is relative to, or plate -> folder for the
        manifests of several plates (:func:`hcsflow.io.field_paths`).
    **kwargs
        Options of :func:`fit`.

    Raises
    ------
    BadImageError
        With ``on_bad_image="stop"``, as above.
    """
    if on_bad_image not in ("stop", "drop"):
        raise ValueError(f"discovery.on_bad_image must be 'stop' or 'drop', got {on_bad_image!r}")
    if read is None:
        from hcsflow.io import read_image as read
    cols = [f"PathName_{channel}", f"FileName_{channel}"]
    missing = [c for c in cols if c not in manifest]
    if missing:
        raise ValueError(f"the manifest has no column {missing[0]} for channel {channel!r}")
    if len(manifest) == 0:
        raise ValueError(f"the manifest has no fields to estimate channel {channel!r} from")
    rows = sample_fields(manifest, max_fields, seed)
    names: list[str] = []  # filled as fields are read: fit() names field i by names[i]
    dropped: list[dict[str, Any]] = []

    def fields() -> Iterator[np.ndarray]:
        shape: tuple[int, ...] | None = None
        for row in rows.to_dict("records"):
            path = field_paths(row, [channel], root)[0]
            where = {
                "plate": str(row["Metadata_Plate"]) if "Metadata_Plate" in row else None,
                "well": str(row["Metadata_Well"]) if "Metadata_Well" in row else None,
                "site": int(row["Metadata_Site"]) if "Metadata_Site" in row else None,
                "channel": channel,
            }
            try:
                try:
                    img = np.asarray(read(path))
                except BadImageError as exc:
                    raise exc.at(**where) from exc
                except ValueError as exc:
                    raise BadImageError(path, str(exc), **where) from exc
                if shape is not None and img.shape != shape:
                    raise BadImageError(
                        path,
                        f"has shape {img.shape}, but the other sampled fields have {shape}",
                        **where,
                    )
            except BadImageError as exc:
                if on_bad_image == "stop":
                    raise
                warnings.warn(f"left out of the estimate: {exc}", IlluminationWarning, stacklevel=2)
                dropped.append(exc.record())
                continue
            shape = img.shape if shape is None else shape
            names.append(str(BadImageError(path, "field", **where)).removesuffix(": field"))
            yield img

    result = fit(fields(), method, names=names, **kwargs)
    result.dropped = dropped
    return result


def write_corrected(
    manifest: pd.DataFrame,
    profiles: Mapping[str, str | os.PathLike[str]],
    folder: str | os.PathLike[str],
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    root: ImagesRoot = None,
) -> int:
    """Write a corrected float32 TIFF of every field and channel of a manifest.

    Files are named like the raw ones (suffix replaced by ``.tif``) inside ``folder``, each
    written atomically. Returns the number of images written.

    Parameters
    ----------
    manifest : DataFrame
        Manifest rows with ``PathName_<ch>`` and ``FileName_<ch>``.
    profiles : mapping of str to path
        Channel name -> npz file written by :func:`save`.
    folder : path
        Output folder (created).
    read : callable, optional
        Image reader; default :func:`hcsflow.io.read_image`.
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<ch>`` is relative to (:func:`hcsflow.io.field_paths`).
    """
    import tifffile

    if read is None:
        from hcsflow.io import read_image as read
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for ch, path in sorted(profiles.items()):
        flat, dark = load(path)
        for row in manifest.to_dict("records"):
            image = field_paths(row, [ch], root)[0]
            img = read(image)
            if img.shape != flat.shape:
                raise ValueError(
                    f"image {image} has shape {img.shape}, but the {ch} flat-field "
                    f"{path} has {flat.shape}"
                )
            with atomic_path(folder / (image.stem + ".tif")) as tmp:
                tifffile.imwrite(tmp, correct(img, flat, dark), compression="zlib")
            n += 1
    return n
