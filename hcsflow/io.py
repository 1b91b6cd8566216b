"""Reading and writing the workflow's tables and images.

Every table the workflow writes is Parquet with provenance in its schema metadata (key
``hcsflow``): the package version, a hash of the configuration that produced it, the versions of
the packages that shaped it and checksums of its inputs. Writes are atomic: the file appears
complete under its final name or not at all, so a failed job never leaves half a table behind.
Same inputs and configuration give byte-identical files (no timestamps, sorted keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hcsflow import __version__
from hcsflow.wells import normalize_well

PROVENANCE_KEY = b"hcsflow"

#: Packages whose versions are recorded in every table's provenance.
TRACKED_PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "scikit-image",
    "scikit-learn",
    "tifffile",
    "torch",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Return the installed version of each named distribution (``"absent"`` if missing)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 chars) of a configuration mapping in canonical JSON form."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_checksum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_provenance(
    step: str,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the provenance record stored in a table's schema metadata.

    Parameters
    ----------
    step : str
        Name of the workflow step that wrote the table (``"discover"``, ``"profiles"``, ...).
    config : mapping, optional
        The configuration section that shaped the result; stored whole and hashed.
    inputs : mapping of str to str, optional
        Input name -> checksum (or another stable digest, e.g. of a folder listing).
    extra : mapping, optional
        Anything else worth recording (method choices, steps applied, model checksum).
    """
    record: dict[str, Any] = {
        "hcsflow_version": __version__,
        "step": step,
        "packages": package_versions(),
    }
    if config is not None:
        record["config"] = config
        record["config_hash"] = config_hash(config)
    if inputs is not None:
        record["inputs"] = dict(sorted(inputs.items()))
    if extra is not None:
        record.update(extra)
    return record


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success.

    The temporary file lives in the destination folder so the final ``os.replace`` is atomic.
    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """Write ``df`` to Parquet atomically, with provenance in the schema metadata.

    The index is not stored. The output is byte-identical for identical ``df`` and
    ``provenance``. Columns are Snappy-compressed; floating-point columns are stored without a
    dictionary (measurements rarely repeat, and plain pages decode about 1.4x faster), other
    columns (metadata) with one. Per-cell tables are read far more often than written, so the
    encoding is chosen for reading: about 2.6x faster than zstd with dictionaries on a shard of
    15,600 cells x 500 float64 features, for 4 % more bytes.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if provenance is not None:
        meta[PROVENANCE_KEY] = json.dumps(
            provenance, sort_keys=True, default=_json_default
        ).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **parquet_write_options(table.schema))


def parquet_write_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments of ``pyarrow.parquet.write_table`` used for every hcsflow table.

    Snappy compression; dictionary encoding for every column that is not floating-point.
    """
    return {
        "compression": "snappy",
        "use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type)],
    }


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet table written by :func:`write_table`."""
    return pq.read_table(path, columns=columns).to_pandas()


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the provenance record of a table written by :func:`write_table` (``{}`` if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def read_manifest(results: str | os.PathLike[str], plate: str) -> pd.DataFrame:
    """Read the manifest of one plate: one row per field (``Metadata_*``, ``FileName_<ch>``,
    ``PathName_<ch>``).

    Parameters
    ----------
    results : path
        The workflow's results folder.
    plate : str
        Plate name as in the plate sheet.
    """
    path = Path(results) / "manifest" / f"{plate}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no manifest for plate {plate!r}: {path} does not exist")
    return read_table(path)


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# segmentation masks
#
# The masks of one plate x shard live in one compressed NumPy archive
# ``{results}/masks/{plate}/{shard}.npz`` holding, per field, the arrays
# ``{well}_s{site}_nuclei`` and ``{well}_s{site}_cells`` (uint32 label images, cell k contains
# nucleus k). The archive is written with fixed zip timestamps so identical masks give
# identical bytes.


def mask_key(well: str, site: int, kind: str) -> str:
    """Name of one field's label image in a mask archive (``kind``: nuclei or cells).

    The well may be given as ``D3`` or ``D03``; the name holds the ``D03`` form.
    """
    if kind not in ("nuclei", "cells"):
        raise ValueError(f"mask kind must be 'nuclei' or 'cells', got {kind!r}")
    return f"{normalize_well(well)}_s{int(site)}_{kind}"


class MaskWriter:
    """Write the label images of several fields to one compressed archive, field by field.

    The archive is built in a temporary file beside ``path`` and moved into place when the
    ``with`` block ends without an exception (nothing is left behind otherwise). Only the field
    being written is held in memory, so a shard's masks need not be kept until its end.
    Fields must be added in increasing (well, site) order, the order :func:`write_masks` uses,
    so that both give the same bytes.

    Parameters
    ----------
    path : path-like
        Destination ``.npz``.

    Examples
    --------
    >>> with MaskWriter("masks/P1/000.npz") as out:  # doctest: +SKIP
    ...     out.add("A01", 1, nuclei, cells)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stack: contextlib.ExitStack | None = None
        self._zip: Any = None
        self._last: tuple[str, int] | None = None
        self.n_fields = 0

    def __enter__(self) -> MaskWriter:
        import zipfile

        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        self._zip = stack.enter_context(
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        )
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> bool:
        assert self._stack is not None
        stack, self._stack, self._zip = self._stack, None, None
        return bool(stack.__exit__(*exc))

    def add(self, well: str, site: int, nuclei: np.ndarray, cells: np.ndarray) -> None:
        """Append one field's nuclear and whole-cell label images (stored as uint32).

        Raises
        ------
        ValueError
            A mask that is not 2-D, or a field not after the previous one in (well, site) order.
        """
        import zipfile

        if self._zip is None:
            raise ValueError(f"MaskWriter({self.path}) is used outside its with block")
        key = (str(well), int(site))
        if self._last is not None and key <= self._last:
            raise ValueError(
                f"{self.path}: well {well} site {site} added after well {self._last[0]} site "
                f"{self._last[1]}; fields must be added in increasing (well, site) order"
            )
        for kind, arr in zip(("nuclei", "cells"), (nuclei, cells), strict=True):
            arr = np.asarray(arr)
            if arr.ndim != 2:
                raise ValueError(
                    f"{kind} mask of well {well} site {site} has shape {arr.shape}; expected (H, W)"
                )
            info = zipfile.ZipInfo(
                mask_key(key[0], key[1], kind) + ".npy", date_time=(1980, 1, 1, 0, 0, 0)
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            with self._zip.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(
                    fh, np.ascontiguousarray(arr, dtype=np.uint32), allow_pickle=False
                )
        self._last = key
        self.n_fields += 1


def write_masks(
    path: str | os.PathLike[str],
    masks: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
) -> None:
    """Write the label images of several fields to one compressed archive, atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.npz``.
    masks : mapping of (well, site) to (nuclei, cells)
        Label images of shape (H, W), stored as uint32; fields in sorted order.

    See Also
    --------
    MaskWriter : the same archive written one field at a time.
    """
    with MaskWriter(path) as out:
        for (well, site), (nuclei, cells) in sorted(masks.items()):
            out.add(well, site, nuclei, cells)


def read_masks(
    results: str | os.PathLike[str], plate: str, well: str, site: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclear and whole-cell label images of one field.

    The shard that holds the field is found by listing the members of each archive in
    ``{results}/masks/{plate}/`` (the zip directory only; nothing is decompressed) in sorted
    order; only the two arrays of the field are then decompressed.

    Parameters
    ----------
    results : path
        The workflow's results folder.
    plate, well : str
        Plate name and well (``A01`` or ``A1``).
    site : int
        Site (field) number as in the manifest.

    Returns
    -------
    nuclei, cells : ndarray of uint32, shape (H, W)
        Cell ``k`` contains nucleus ``k``; 0 is background.
    """
    import zipfile

    folder = Path(results) / "masks" / plate
    if not folder.is_dir():
        raise FileNotFoundError(f"no masks for plate {plate!r}: {folder} does not exist")
    member = mask_key(well, site, "nuclei") + ".npy"
    for shard in sorted(folder.glob("*.npz")):
        with zipfile.ZipFile(shard) as zf:
            if member not in zf.namelist():
                continue
        with np.load(shard, allow_pickle=False) as npz:
            return (
                npz[mask_key(well, site, "nuclei")].astype(np.uint32, copy=False),
                npz[mask_key(well, site, "cells")].astype(np.uint32, copy=False),
            )
    raise KeyError(f"plate {plate!r}: no masks for well {well} site {site} in {folder}")
