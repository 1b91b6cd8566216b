"""Reading images: headers, single images and the channels of a manifest's field.

Errors name the file and, when known, the plate, well, site and channel
(:class:`BadImageError`); paths in a manifest are relative to the plate's image folder
(:data:`ImagesRoot`, :func:`field_paths`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class BadImageError(ValueError):
    """An image file that cannot be used: unreadable, empty, truncated or of the wrong kind.

    The message names the file and, when known, the plate, well, site and channel of the
    field it belongs to; the same facts are attributes, so that a caller that drops bad fields
    (``discovery.on_bad_image: drop``) can record them.

    Parameters
    ----------
    path : path
        The image file.
    reason : str
        What is wrong with it (without the file name), e.g. ``"empty file (0 bytes)"``.
    plate, well, site, channel : optional
        Where the file belongs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        plate: str | None = None,
        well: str | None = None,
        site: int | None = None,
        channel: str | None = None,
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.plate = plate
        self.well = well
        self.site = None if site is None else int(site)
        self.channel = channel
        super().__init__(self._message())

    def __reduce__(self):  # keep the attributes through pickling (multiprocessing)
        return (
            _rebuild_bad_image,
            (self.path, self.reason, self.plate, self.well, self.site, self.channel),
        )

    def _message(self) -> str:
        parts = []
        if self.plate is not None:
            parts.append(f"plate {self.plate}")
        if self.well is not None:
            parts.append(f"well {self.well}")
        if self.site is not None:
            parts.append(f"site {self.site}")
        if self.channel is not None:
            parts.append(f"channel {self.channel}")
        where = " ".join(parts)
        return f"{where + ': ' if where else ''}image {self.path}: {self.reason}"

    def at(
        self,
        *,
        plate: str | None = None,
        well: str | None = None,
        site: int | None = None,
        channel: str | None = None,
    ) -> BadImageError:
        """The same error with the field's location filled in (known values are kept)."""
        return BadImageError(
            self.path,
            self.reason,
            plate=self.plate if self.plate is not None else plate,
            well=self.well if self.well is not None else well,
            site=self.site if self.site is not None else site,
            channel=self.channel if self.channel is not None else channel,
        )

    def record(self) -> dict[str, Any]:
        """``{"File", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Channel", "Reason"}``."""
        return {
            "File": self.path,
            "Metadata_Plate": self.plate,
            "Metadata_Well": self.well,
            "Metadata_Site": self.site,
            "Channel": self.channel,
            "Reason": self.reason,
        }


def _rebuild_bad_image(
    path: str,
    reason: str,
    plate: str | None,
    well: str | None,
    site: int | None,
    channel: str | None,
) -> BadImageError:
    return BadImageError(path, reason, plate=plate, well=well, site=site, channel=channel)


def _field_location(row: Mapping[str, Any]) -> dict[str, Any]:
    """``plate``, ``well``, ``site`` of a manifest row (those it has)."""
    out: dict[str, Any] = {}
    for key, col in (("plate", "Metadata_Plate"), ("well", "Metadata_Well")):
        if col in row:
            out[key] = str(row[col])
    if "Metadata_Site" in row:
        out["site"] = int(row["Metadata_Site"])
    return out


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says about its pixels, read without decoding them.

    Attributes
    ----------
    shape : tuple of int
        ``(H, W)`` of the image as :func:`read_image` returns it.
    dtype : str
        NumPy type name of the pixels, e.g. ``"uint16"``.
    bits : int
        Bits per sample recorded in the file (12 for 12-bit data in 16-bit words, when the
        file says so; otherwise the type's size).
    """

    shape: tuple[int, int]
    dtype: str
    bits: int

    @property
    def kind(self) -> str:
        """Type and bit depth, e.g. ``"uint16 (16-bit)"``."""
        return f"{self.dtype} ({self.bits}-bit)"


def read_image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Check one image file cheaply and return its pixels' shape, type and bit depth.

    TIFF files are checked from their header alone (pixels are not decoded): the file must be
    non-empty, its header readable, the image 2-D (single channel, or RGB with the same value
    in each sample, as :func:`read_image` accepts) and the image data the header points to must
    lie inside the file (a file cut short fails here). Other formats are decoded with
    :func:`read_image`.

    Parameters
    ----------
    path : path
        The image file.

    Returns
    -------
    ImageHeader

    Raises
    ------
    BadImageError
        Naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImageError(path, f"cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if path.suffix.lower() not in (".tif", ".tiff"):
        img = read_image(path)
        bits = img.dtype.itemsize * 8
        return ImageHeader((int(img.shape[0]), int(img.shape[1])), img.dtype.name, bits)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            dtype = np.dtype(series.dtype)
            page = tif.pages.first
            bits = int(page.bitspersample)
            end = 0
            for pg in series.pages:
                if pg is None:
                    continue
                for offset, count in zip(pg.dataoffsets, pg.databytecounts, strict=False):
                    end = max(end, int(offset) + int(count))
    except Exception as exc:  # noqa: BLE001 - any failure of the header is a bad file
        raise BadImageError(path, f"unreadable TIFF header ({exc})") from exc
    if end > size:
        raise BadImageError(
            path, f"truncated: its image data end at byte {end} but the file has {size} bytes"
        )
    if len(shape) == 3 and shape[-1] in (3, 4):
        shape = shape[:2]
    if len(shape) != 2:
        raise BadImageError(path, f"holds an image of shape {shape}; expected a 2-D single channel")
    return ImageHeader((shape[0], shape[1]), dtype.name, bits)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one single-channel 2-D image (TIFF or PNG) as stored, shape ``(H, W)``.

    Raises
    ------
    BadImageError
        (a ``ValueError``) naming the file if it cannot be read or is not 2-D.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            img = tifffile.imread(path)
        else:
            from skimage import io as skio

            img = skio.imread(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise BadImageError(path, f"cannot be read ({exc})") from exc
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4) and np.all(img[..., 0] == img[..., 1]):
        img = img[..., 0]
    if img.ndim != 2:
        raise BadImageError(path, f"has shape {img.shape}; expected a 2-D single channel")
    return img


#: The image folder a manifest's ``PathName_<channel>`` columns are relative to: one folder, a
#: mapping ``Metadata_Plate`` -> folder (manifests of several plates), or None (paths as stored).
ImagesRoot = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]] | None


def row_root(row: Mapping[str, Any], root: ImagesRoot) -> Path | None:
    """The image folder of one manifest row: ``root``, or its entry for the row's plate.

    Parameters
    ----------
    row : mapping
        A manifest row (``Metadata_Plate`` is needed when ``root`` is a mapping).
    root : path, mapping of plate to path, or None
        See :data:`ImagesRoot`.

    Raises
    ------
    ValueError
        ``root`` is a mapping without the row's plate.
    """
    if root is None:
        return None
    if isinstance(root, Mapping):
        plate = str(row.get("Metadata_Plate"))
        if plate not in root:
            raise ValueError(
                f"no image folder given for plate {plate!r} (image folders are known for "
                f"{', '.join(map(repr, sorted(root))) or 'no plate'})"
            )
        return Path(root[plate])
    return Path(root)


def field_paths(row: Mapping[str, Any], channels: list[str], root: ImagesRoot = None) -> list[Path]:
    """Paths of one manifest row's images, in the order of ``channels``.

    Parameters
    ----------
    row : mapping
        A manifest row (``PathName_<ch>``, ``FileName_<ch>``, ``Metadata_Plate``).
    channels : list of str
        Channel names.
    root : path, mapping of plate to path, or None
        The plate's image folder (the plate sheet's ``images``), which ``PathName_<ch>`` is
        relative to; a mapping ``Metadata_Plate`` -> folder for rows of several plates; None
        takes ``PathName_<ch>`` as it is (relative to the working directory). An absolute
        ``PathName_<ch>`` is used as it is whatever ``root``.
    """
    base = row_root(row, root)
    paths = [Path(row[f"PathName_{ch}"]) / row[f"FileName_{ch}"] for ch in channels]
    return paths if base is None else [base / p for p in paths]


def resolve_paths(manifest: pd.DataFrame, root: ImagesRoot) -> pd.DataFrame:
    """A copy of ``manifest`` whose ``PathName_<channel>`` columns are absolute paths.

    The result is a CellProfiler LoadData table: write it with
    ``resolve_paths(manifest, root).to_csv("load_data.csv", index=False)``.

    Parameters
    ----------
    manifest : DataFrame
        Manifest rows (``PathName_<ch>``, ``FileName_<ch>``, ``Metadata_Plate``).
    root : path, mapping of plate to path, or None
        As in :func:`field_paths`.

    Returns
    -------
    DataFrame
        The manifest with ``PathName_<ch>`` made absolute; the argument is not modified.
    """
    out = manifest.copy()
    cols = [c for c in manifest.columns if c.startswith("PathName_")]
    keep = cols + (["Metadata_Plate"] if "Metadata_Plate" in manifest else [])
    rows = manifest[keep].to_dict("records")
    for col in cols:
        out[col] = [os.path.abspath(Path(row_root(r, root) or "") / r[col]) for r in rows]
    return out


def read_field(row: Mapping[str, Any], channels: list[str], root: ImagesRoot = None) -> np.ndarray:
    """Read the images of one manifest row as a stack of shape ``(C, H, W)``.

    ``root`` is the image folder ``PathName_<ch>`` is relative to (see :func:`field_paths`).

    Raises
    ------
    BadImageError
        A file that cannot be read, is not 2-D or whose shape differs from the first
        channel's; the message names the file, plate, well, site and channel.
    """
    paths = field_paths(row, channels, root)
    where = _field_location(row)
    imgs = []
    for ch, p in zip(channels, paths, strict=True):
        try:
            img = read_image(p)
        except BadImageError as exc:
            raise exc.at(**where, channel=ch) from exc
        if imgs and img.shape != imgs[0].shape:
            raise BadImageError(
                p,
                f"has shape {img.shape}, but {paths[0]} ({channels[0]}) of the same field has "
                f"{imgs[0].shape}",
                **where,
                channel=ch,
            )
        imgs.append(img)
    return np.stack(imgs)


def check_shape(
    image: np.ndarray,
    expected: tuple[int, ...],
    row: Mapping[str, Any],
    channel: str,
    what: str,
    root: ImagesRoot = None,
) -> None:
    """Raise :class:`BadImageError` naming the field's file unless ``image`` is ``expected``.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        One channel of a field.
    expected : tuple of int
        The shape it must have, e.g. the flat-field's ``(H, W)``.
    row : mapping
        The field's manifest row (``PathName_<channel>``, ``FileName_<channel>``,
        ``Metadata_*``).
    channel : str
        The channel's name.
    what : str
        What sets the expected shape, e.g. ``"the DNA flat-field"``.
    root : path, mapping of plate to path, or None
        The image folder ``PathName_<channel>`` is relative to (see :func:`field_paths`).
    """
    if tuple(image.shape[-2:]) != tuple(expected):
        path = field_paths(row, [channel], root)[0]
        raise BadImageError(
            path,
            f"has shape {tuple(image.shape[-2:])}, but {what} has {tuple(expected)}",
            **_field_location(row),
            channel=channel,
        )
