"""Plate discovery: a folder of vendor-named images and a plate map -> the plate's manifest.

The manifest has one row per field (well x site) with CellProfiler LoadData columns
(``FileName_<channel>``, ``PathName_<channel>``), the field's ``Metadata_*`` keys and the plate
map's treatment columns. ``PathName_<channel>`` is relative to the plate's image folder (``.``
for files directly in it), so a manifest does not depend on where the project or the images
live; readers take that folder as ``root`` (:func:`hcsflow.io.field_paths`), and
:func:`hcsflow.io.resolve_paths` gives absolute paths (a CellProfiler LoadData table). Problems are either errors (default) or, when the configuration says
``drop``, fields left out and recorded in a QC table.

Every image file of a field that goes into the manifest is checked from its header (see
:func:`hcsflow.io.read_image_header`): it must be non-empty, readable and not cut short, and
have the plate's image shape and its channel's pixel type and bit depth. The plate's shape is
the one most of its files have, a channel's type the one most of its files have (ties go to
the first field in well and site order), so one odd file among many is the one named.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hcsflow.io import BadImageError, ImageHeader, read_image_header
from hcsflow.layouts import ImageKey, parse_filename, split_well
from hcsflow.platemap import read_platemap, well_sort_key

QC_COLUMNS = [
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Issue",
    "Channel",
    "File",
    "Detail",
]

#: Values of ``on_bad_image`` (configuration key ``discovery.on_bad_image``).
BAD_IMAGE_CHOICES = ("stop", "drop")

#: Bad files listed in one error message (the rest are counted).
_MAX_LISTED = 10


class DiscoveryError(ValueError):
    """A plate folder or plate map that does not give a usable manifest."""


@dataclass(frozen=True)
class Channel:
    """One channel of the assay: its name in tables, its id in file names, its role."""

    name: str
    id: str
    role: str = "other"


@dataclass
class Discovery:
    """Result of :func:`discover_plate`: the manifest and the QC records of dropped fields."""

    manifest: pd.DataFrame
    qc: pd.DataFrame
    listing_digest: str
    n_files: int
    notes: list[str] = field(default_factory=list)


def iter_image_entries(folder: str | os.PathLike[str]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Yield ``(relative directory, entry)`` of every file under ``folder``, recursively.

    The relative directory is ``""`` for files directly in ``folder``, else the sub-folders
    joined by ``/``. Hidden files and folders (starting with ``.``) are skipped; symbolic links
    are followed. Order is the file system's. One ``os.scandir`` per folder: the entries'
    ``stat()`` is cached by ``os.DirEntry``.
    """
    stack = [(os.fspath(folder), "")]
    while stack:
        current, rel = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append((entry.path, f"{rel}/{entry.name}" if rel else entry.name))
                elif entry.is_file(follow_symlinks=True):
                    yield rel, entry


def iter_image_files(folder: str | os.PathLike[str]) -> Iterator[tuple[str, str, int]]:
    """Yield ``(directory, file name, size)`` of every file under ``folder``, recursively.

    Hidden files and folders (starting with ``.``) are skipped. Order is the file system's.
    """
    root = os.fspath(folder)
    for rel, entry in iter_image_entries(root):
        yield (os.path.join(root, rel) if rel else root), entry.name, entry.stat().st_size


def probe_channels(
    folder: str | os.PathLike[str], layout: str, channel_ids: Sequence[str]
) -> tuple[set[str], set[str], int]:
    """List ``folder`` only until every channel id has matched a file.

    Cheap enough to run for every plate when the workflow starts: a folder whose channels are
    interleaved is left after a few entries; only a channel id that matches nothing makes the
    whole folder be listed.

    Returns
    -------
    found : set of str
        The wanted channel ids seen.
    seen : set of str
        Every channel id seen in the part of the folder that was listed.
    n_images : int
        Number of files that matched the layout in the part that was listed.
    """
    wanted = set(channel_ids)
    found: set[str] = set()
    seen: set[str] = set()
    n = 0
    for _, name, _ in iter_image_files(folder):
        key = parse_filename(name, layout)
        if key is None:
            continue
        n += 1
        seen.add(key.channel)
        if key.channel in wanted:
            found.add(key.channel)
            if found == wanted:
                break
    return found, seen, n


def discover_plate(
    plate: str,
    images: str | os.PathLike[str],
    layout: str,
    platemap: str | os.PathLike[str],
    channels: Sequence[Channel | Mapping[str, str]],
    *,
    batch: str | None = None,
    on_missing_channel: str = "error",
    on_unmapped_well: str = "error",
    on_bad_image: str = "stop",
    plane: int | None = None,
    timepoint: int | None = None,
) -> Discovery:
    """Build the manifest of one plate.

    Parameters
    ----------
    plate : str
        Plate name (``Metadata_Plate``).
    images : path
        Folder holding the plate's images (searched recursively).
    layout : str
        File-name layout (see :mod:`hcsflow.layouts`).
    platemap : path
        Plate map CSV (see :func:`hcsflow.platemap.read_platemap`).
    channels : sequence of Channel or mapping
        The channels to collect; ids as in the file names.
    batch : str, optional
        Batch of the plate (``Metadata_Batch``).
    on_missing_channel, on_unmapped_well : {"error", "drop"}
        What to do with a field lacking a channel and with a well absent from the plate map.
    on_bad_image : {"stop", "drop"}
        What to do with a field one of whose files is empty, unreadable, truncated, or differs
        from the plate's image shape or its channel's pixel type / bit depth: ``stop`` raises
        naming every such file (well, site, channel); ``drop`` leaves the field out and records
        one QC row per bad file (issue ``bad_image``).
    plane, timepoint : int, optional
        Which z-plane / time point to keep when the layout records several.

    Returns
    -------
    Discovery
        ``manifest`` sorted by well and site, ``PathName_<channel>`` relative to ``images``;
        ``qc`` with one row per dropped field (one per bad file for ``bad_image``) or unimaged
        well (columns :data:`QC_COLUMNS`: ``Metadata_Plate``, ``Metadata_Well``,
        ``Metadata_Site``, ``Issue``, ``Channel`` and ``File`` (of a bad image, relative to
        ``images``, else null), ``Detail``). Error messages name files by their full path.

    Raises
    ------
    DiscoveryError
        No image matches the layout; a channel matches no file; several files for one image; a
        field without some channel or a well absent from the plate map (when set to
        ``error``); a bad image file (when ``on_bad_image`` is ``stop``); several z-planes or
        time points without a choice. The message names the folder, file, well or channel.
    """
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise DiscoveryError(
            f"discovery.on_bad_image must be one of {', '.join(BAD_IMAGE_CHOICES)}, "
            f"got {on_bad_image!r}"
        )
    chans = [c if isinstance(c, Channel) else Channel(**c) for c in channels]
    images = Path(images)
    if not images.is_dir():
        raise DiscoveryError(f"plate {plate}: image folder {images} does not exist")
    keys, listing = _list_files(plate, images, layout)
    digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    keys = _select_plate(plate, keys, images)
    keys = _select_dimension(plate, keys, "z", "plane", plane, images)
    keys = _select_dimension(plate, keys, "t", "timepoint", timepoint, images)
    _check_channels(plate, keys, chans, images, layout)
    files = _files_by_field(plate, keys, chans, images)

    qc_rows: list[dict[str, object]] = []
    pm = read_platemap(platemap)
    candidates = _complete_fields(
        plate, files, chans, pm, platemap, images, on_missing_channel, on_unmapped_well, qc_rows
    )
    bad_fields = _bad_fields(plate, images, candidates, chans, on_bad_image, qc_rows)
    rows = [
        _manifest_row(plate, well, site, slot, chans, batch)
        for well, site, slot in candidates
        if (well, site) not in bad_fields
    ]
    imaged_wells = {w for w, _ in files}
    for well in pm["Metadata_Well"]:
        if well not in imaged_wells:
            qc_rows.append(_qc(plate, well, None, "not_imaged", "in the plate map, no image"))
    if not rows:
        raise DiscoveryError(f"plate {plate}: no usable field in {images} after discovery checks")
    return Discovery(
        manifest=_manifest_table(rows, pm),
        qc=_qc_table(qc_rows),
        listing_digest=digest,
        n_files=len(listing),
    )


#: A parsed file: its key, its directory relative to the image folder ("" for the folder
#: itself) and its name.
_File = tuple[ImageKey, str, str]

#: The files of one field: channel name -> (directory, file name).
_Slot = dict[str, tuple[str, str]]


def _list_files(plate: str, images: Path, layout: str) -> tuple[list[_File], list[str]]:
    """The files under ``images`` whose names parse by ``layout``, and the sorted listing
    (``relative path<TAB>size``) whose digest identifies the folder's content.

    Raises :class:`DiscoveryError` when no file matches.
    """
    keys: list[_File] = []
    listing = []
    for rel, entry in iter_image_entries(images):
        key = parse_filename(entry.name, layout)
        if key is None:
            continue
        listing.append(
            f"{rel}/{entry.name}\t{entry.stat().st_size}"
            if rel
            else f"{entry.name}\t{entry.stat().st_size}"
        )
        keys.append((key, rel, entry.name))
    if not keys:
        raise DiscoveryError(f"plate {plate}: no file in {images} matches layout {layout!r}")
    listing.sort()
    return keys, listing


def _check_channels(
    plate: str, keys: list[_File], chans: list[Channel], images: Path, layout: str
) -> None:
    """Raise :class:`DiscoveryError` naming each configured channel that matches no file."""
    seen_ids = {k.channel for k, _, _ in keys}
    absent = [c for c in chans if c.id not in seen_ids]
    if absent:
        desc = ", ".join(f"{c.name} (id {c.id!r})" for c in absent)
        raise DiscoveryError(
            f"plate {plate}: channel {desc} matches no file in {images} (layout {layout!r}); "
            f"channel ids found there: {', '.join(sorted(seen_ids))}"
        )


def _files_by_field(
    plate: str, keys: list[_File], chans: list[Channel], images: Path
) -> dict[tuple[str, int], _Slot]:
    """The files of the configured channels grouped by (well, site); files of other channel
    ids are ignored. Raises :class:`DiscoveryError` on two files for one image."""
    by_id = {c.id: c for c in chans}
    files: dict[tuple[str, int], _Slot] = {}
    for key, directory, name in keys:
        if key.channel not in by_id:
            continue
        slot = files.setdefault((key.well, key.site), {})
        ch = by_id[key.channel].name
        if ch in slot:
            first = os.path.join(images, *slot[ch])
            raise DiscoveryError(
                f"plate {plate}: two files for well {key.well} site {key.site} channel {ch}: "
                f"{first} and {os.path.join(images, directory, name)}"
            )
        slot[ch] = (directory, name)
    return files


def _complete_fields(
    plate: str,
    files: dict[tuple[str, int], _Slot],
    chans: list[Channel],
    pm: pd.DataFrame,
    platemap: str | os.PathLike[str],
    images: Path,
    on_missing_channel: str,
    on_unmapped_well: str,
    qc_rows: list[dict[str, object]],
) -> list[tuple[str, int, _Slot]]:
    """The fields, in well and site order, that have every channel and a plate-map entry.

    A field without some channel or in a well absent from the plate map raises
    :class:`DiscoveryError` (``error``) or gets a QC row appended to ``qc_rows`` (``drop``).
    """
    mapped = set(pm["Metadata_Well"])
    candidates: list[tuple[str, int, _Slot]] = []
    for (well, site), slot in sorted(
        files.items(), key=lambda kv: (well_sort_key(kv[0][0]), kv[0][1])
    ):
        missing = [c.name for c in chans if c.name not in slot]
        if missing:
            some = next(iter(slot.values()))
            detail = f"no image of channel(s) {', '.join(missing)} (e.g. beside {some[1]})"
            if on_missing_channel == "error":
                raise DiscoveryError(
                    f"plate {plate}: well {well} site {site} has {detail} in {images}; set "
                    "discovery.on_missing_channel: drop to leave such fields out"
                )
            qc_rows.append(_qc(plate, well, site, "missing_channel", detail))
            continue
        if well not in mapped:
            if on_unmapped_well == "error":
                raise DiscoveryError(
                    f"plate {plate}: well {well} was imaged but is absent from plate map "
                    f"{platemap}; add it (role empty if unused) or set "
                    "discovery.on_unmapped_well: drop"
                )
            qc_rows.append(_qc(plate, well, site, "unmapped_well", f"absent from {platemap}"))
            continue
        candidates.append((well, site, slot))
    return candidates


def _bad_fields(
    plate: str,
    images: Path,
    candidates: list[tuple[str, int, _Slot]],
    chans: list[Channel],
    on_bad_image: str,
    qc_rows: list[dict[str, object]],
) -> set[tuple[str | None, int | None]]:
    """The (well, site) of the fields with a bad image file.

    With ``on_bad_image="stop"`` a bad file raises :class:`DiscoveryError` listing them; with
    ``drop`` each bad file gets a QC row appended to ``qc_rows``.
    """
    bad = _check_images(plate, images, candidates, [c.name for c in chans])
    if bad and on_bad_image == "stop":
        listed = "\n  ".join(str(e) for e in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DiscoveryError(
            f"plate {plate}: {len(bad)} bad image file(s) in {images}:\n  {listed}{more}\n"
            "Replace them, or set discovery.on_bad_image: drop to leave their fields out "
            f"(recorded in the discovery QC table)"
        )
    bad_fields: set[tuple[str | None, int | None]] = set()
    for err in bad:  # errors of _check_images carry well and site
        bad_fields.add((err.well, err.site))
        qc_rows.append(
            _qc(
                plate,
                str(err.well),
                err.site,
                "bad_image",
                err.reason,
                err.channel,
                Path(os.path.relpath(err.path, images)).as_posix(),
            )
        )
    return bad_fields


def _manifest_row(
    plate: str, well: str, site: int, slot: _Slot, chans: list[Channel], batch: str | None
) -> dict[str, object]:
    """One field's manifest record: ``Metadata_*`` keys, ``FileName_``/``PathName_<ch>``."""
    row_letter, column = split_well(well)
    rec: dict[str, object] = {
        "Metadata_Plate": plate,
        "Metadata_Well": well,
        "Metadata_Row": row_letter,
        "Metadata_Column": column,
        "Metadata_Site": site,
        "Metadata_Batch": batch if batch else "default",
    }
    for c in chans:
        rec[f"FileName_{c.name}"] = slot[c.name][1]
        rec[f"PathName_{c.name}"] = slot[c.name][0] or "."
    return rec


def _manifest_table(rows: list[dict[str, object]], pm: pd.DataFrame) -> pd.DataFrame:
    """The manifest: field records joined with the plate map, ``Metadata_*`` columns first."""
    fields = pd.DataFrame(rows)
    manifest = fields.merge(pm, on="Metadata_Well", how="left", validate="many_to_one")
    meta = [c for c in manifest.columns if c.startswith("Metadata_")]
    rest = [c for c in manifest.columns if not c.startswith("Metadata_")]
    manifest = manifest[meta + rest]
    manifest["Metadata_Site"] = manifest["Metadata_Site"].astype("int64")
    manifest["Metadata_Column"] = manifest["Metadata_Column"].astype("int64")
    return manifest


def _qc_table(qc_rows: list[dict[str, object]]) -> pd.DataFrame:
    """The discovery QC table (columns :data:`QC_COLUMNS`)."""
    qc = pd.DataFrame(qc_rows, columns=QC_COLUMNS)
    qc["Metadata_Site"] = qc["Metadata_Site"].astype("Int64")
    for col in ("Channel", "File"):
        qc[col] = qc[col].astype("string")
    return qc


def _qc(
    plate: str,
    well: str,
    site: int | None,
    issue: str,
    detail: str,
    channel: str | None = None,
    path: str | None = None,
) -> dict[str, object]:
    return {
        "Metadata_Plate": plate,
        "Metadata_Well": well,
        "Metadata_Site": site,
        "Issue": issue,
        "Channel": channel,
        "File": path,
        "Detail": detail,
    }


def _check_images(
    plate: str,
    images: Path,
    fields: Sequence[tuple[str, int, Mapping[str, tuple[str, str]]]],
    channel_names: Sequence[str],
) -> list[BadImageError]:
    """Check the header of every file of ``fields`` against the plate's shape and types.

    Parameters
    ----------
    plate : str
    images : Path
        The plate's image folder.
    fields : sequence of (well, site, {channel: (directory, file name)})
        The fields, in well and site order; directories relative to ``images``.
    channel_names : sequence of str
        Channel order within a field.

    Returns
    -------
    list of BadImageError
        One per bad file, in field then channel order, each naming the file, well, site and
        channel. A file is bad when it is empty, its header unreadable or its data cut short,
        or when its shape differs from the plate's most common shape or its type and bit depth
        from its channel's most common ones (ties: the first field's).
    """
    headers: dict[tuple[str, int, str], tuple[ImageHeader, str]] = {}
    bad: dict[tuple[str, int, str], BadImageError] = {}
    shapes: Counter[tuple[int, int]] = Counter()
    kinds: dict[str, Counter[tuple[str, int]]] = {ch: Counter() for ch in channel_names}
    for well, site, slot in fields:
        for ch in channel_names:
            path = os.path.join(images, *slot[ch])
            try:
                h = read_image_header(path)
            except BadImageError as exc:
                bad[(well, site, ch)] = exc.at(plate=plate, well=well, site=site, channel=ch)
                continue
            headers[(well, site, ch)] = (h, path)
            shapes[h.shape] += 1
            kinds[ch][(h.dtype, h.bits)] += 1
    # most common value; Counter keeps first-seen order, so a tie goes to the first field
    shape = max(shapes, key=shapes.__getitem__) if shapes else None
    kind = {ch: max(c, key=c.__getitem__) for ch, c in kinds.items() if c}
    for (well, site, ch), (h, path) in headers.items():
        n_shape, n_kind = shapes[h.shape if shape is None else shape], kinds[ch][kind[ch]]
        if h.shape != shape:
            reason = (
                f"image of shape {h.shape}, but {n_shape} file(s) of plate {plate} have {shape}"
            )
        elif (h.dtype, h.bits) != kind[ch]:
            want = ImageHeader(h.shape, *kind[ch]).kind
            reason = f"{h.kind} pixels, but {n_kind} file(s) of channel {ch} are {want}"
        else:
            continue
        bad[(well, site, ch)] = BadImageError(
            path, reason, plate=plate, well=well, site=site, channel=ch
        )
    order = {(w, s): i for i, (w, s, _) in enumerate(fields)}
    rank = {ch: i for i, ch in enumerate(channel_names)}
    return [bad[k] for k in sorted(bad, key=lambda k: (order[(k[0], k[1])], rank[k[2]]))]


def _select_plate(
    plate: str, keys: list[tuple[ImageKey, str, str]], images: Path
) -> list[tuple[ImageKey, str, str]]:
    """Keep the files of ``plate`` when a folder holds several plates' images."""
    names = {k.plate for k, _, _ in keys if k.plate is not None}
    if len(names) <= 1:
        return keys
    if plate in names:
        return [t for t in keys if t[0].plate == plate]
    raise DiscoveryError(
        f"plate {plate}: {images} holds images of several plates ({', '.join(sorted(names))}) "
        f"and none is named {plate!r}; name the plate as in its files or give each plate its "
        "own folder"
    )


def _select_dimension(
    plate: str,
    keys: list[tuple[ImageKey, str, str]],
    attr: str,
    option: str,
    choice: int | None,
    images: Path,
) -> list[tuple[ImageKey, str, str]]:
    values = sorted({getattr(k, attr) for k, _, _ in keys if getattr(k, attr) is not None})
    if choice is not None:
        kept = [t for t in keys if getattr(t[0], attr) in (None, choice)]
        if values and choice not in values:
            raise DiscoveryError(
                f"plate {plate}: discovery.{option} is {choice} but {images} has "
                f"{option}s {', '.join(map(str, values))}"
            )
        return kept
    if len(values) > 1:
        raise DiscoveryError(
            f"plate {plate}: {images} has {len(values)} {option}s "
            f"({', '.join(map(str, values[:10]))}); hcsflow processes 2-D fields: choose one "
            f"with discovery.{option}"
        )
    return keys
