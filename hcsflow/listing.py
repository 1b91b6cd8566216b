"""Listings of plate image folders, so that re-imaged or added fields rerun what depends on them.

A plate's listing is a small text file with one line per image file of its folder: the path
relative to the folder, the size in bytes and the modification time in nanoseconds, sorted by
path. The workflow refreshes every plate's listing when it starts and rewrites the file only
when its content changed (atomically), so the file's modification time moves exactly when a
file of the plate was added, removed, replaced or touched. The listing is an input of the
plate's discovery job: a changed folder reruns that plate's discovery and, through the
manifest, everything downstream of it, and nothing of the other plates. Paths are relative and
no absolute folder is written, so moving or copying the project (with modification times kept,
``cp -a``) leaves every listing as it was.

Only the workflow's main process lists folders: a job that re-reads the workflow inside a
cluster job or a subprocess (:func:`should_list`) relies on the listings the main process wrote.

The module knows nothing of Snakemake; ``rules/common.smk`` calls :func:`update_listings`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from hcsflow.discover import iter_image_entries
from hcsflow.io import atomic_path
from hcsflow.layouts import LayoutError, compile_layout, matches_layout

#: First line of every listing.
HEADER = "path\tsize\tmtime_ns"

#: Execution modes in which the workflow lists image folders (the main process only).
LISTING_MODES = ("default",)

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class ListingError(ValueError):
    """An image folder that cannot be listed; the message names the plate and the folder."""


class ListingEntry(NamedTuple):
    """One image file of a plate folder.

    Attributes
    ----------
    path : str
        Path relative to the folder, sub-folders joined by ``/``.
    size : int
        Size in bytes.
    mtime_ns : int
        Modification time in nanoseconds.
    """

    path: str
    size: int
    mtime_ns: int


def list_images(folder: str | os.PathLike[str], layout: str | None = None) -> list[ListingEntry]:
    """List the image files of a plate folder, recursively, sorted by relative path.

    Folders and files whose names start with ``.`` are skipped, as discovery skips them
    (:func:`hcsflow.discover.iter_image_entries`); one ``os.scandir`` per folder and one
    ``stat`` per file.

    Parameters
    ----------
    folder : path
        The plate's image folder.
    layout : str, optional
        File-name layout (:mod:`hcsflow.layouts`): only files whose names it matches, the
        files discovery reads, are listed. None lists every file.

    Returns
    -------
    list of ListingEntry

    Raises
    ------
    OSError
        The folder (or a sub-folder) cannot be read.
    LayoutError
        An unknown layout or an unusable pattern.
    """
    if layout is not None:
        compile_layout(layout)  # an unusable layout fails here, not at the first file
    entries = []
    for rel, entry in iter_image_entries(folder):
        name = entry.name
        if layout is not None and not matches_layout(name, layout):
            continue
        st = entry.stat()
        entries.append(ListingEntry(f"{rel}/{name}" if rel else name, st.st_size, st.st_mtime_ns))
    entries.sort()
    return entries


def format_listing(entries: Iterable[ListingEntry]) -> str:
    """The text of a listing: :data:`HEADER`, then ``path<TAB>size<TAB>mtime_ns`` per file.

    Tabs, newlines and backslashes in paths are escaped (``\\t``, ``\\n``, ``\\\\``), so every
    file is one line. The same entries always give the same text.
    """
    entries = list(entries)
    paths = [e.path for e in entries]
    joined = "".join(paths)
    if any(c in joined for c in "\\\t\n\r"):  # rare: escape only then
        paths = [p.translate(_ESCAPES) for p in paths]
    lines = [HEADER]
    lines += [f"{p}\t{e.size}\t{e.mtime_ns}" for p, e in zip(paths, entries, strict=True)]
    return "\n".join(lines) + "\n"


def write_if_changed(path: str | os.PathLike[str], text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless the file already holds exactly that text.

    Returns
    -------
    bool
        True when the file was written (it was absent or different); its modification time
        is left alone otherwise.
    """
    path = Path(path)
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def update_listings(
    plates: Iterable[tuple[str, str | os.PathLike[str], str | None]],
    folder: str | os.PathLike[str],
    sheet: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Refresh ``{folder}/{plate}.tsv`` of every plate; rewrite only those that changed.

    Parameters
    ----------
    plates : iterable of (plate, image folder, layout)
        The plate sheet's plates; ``layout`` as in :func:`list_images`.
    folder : path
        Where the listings live (``{results}/listing``).
    sheet : path, optional
        The plate sheet, named in error messages.

    Returns
    -------
    list of str
        The plates whose listing was written (new, or its folder changed), in the given order.

    Raises
    ------
    ListingError
        An image folder that does not exist or cannot be read, or an unusable layout; one
        line per such plate, naming the plate and the folder. No listing is written when any
        plate fails.
    """
    texts: dict[str, str] = {}
    problems = []
    for plate, images, layout in plates:
        where = f"plate sheet {sheet}, plate {plate}" if sheet is not None else f"plate {plate}"
        if not Path(images).is_dir():
            problems.append(f"- {where}: image folder {images} does not exist")
            continue
        try:
            texts[plate] = format_listing(list_images(images, layout))
        except OSError as exc:
            problems.append(
                f"- {where}: image folder {images} cannot be listed "
                f"({exc.strerror or exc}: {exc.filename})"
            )
        except LayoutError as exc:
            problems.append(f"- {where}: {exc}")
    if problems:
        raise ListingError("\n".join(problems))
    return [p for p, text in texts.items() if write_if_changed(Path(folder) / f"{p}.tsv", text)]


def should_list(exec_mode: str | None) -> bool:
    """Whether this reading of the workflow should refresh the image listings.

    Only the main process does: a cluster job (Snakemake's ``remote`` mode, as the SLURM
    executor's job steps run) or a local subprocess job (``subprocess``) reads the workflow
    again, and listing every plate folder there would cost every job the whole campaign's scan.

    Parameters
    ----------
    exec_mode : str or None
        Snakemake's execution mode by name (``default``, ``subprocess``, ``remote``; case is
        ignored); None when unknown, taken as the main process.
    """
    return exec_mode is None or exec_mode.lower() in LISTING_MODES
