"""Segmentation masks: one compressed archive per plate x shard.

The masks of one plate x shard live in one compressed NumPy archive
``{results}/masks/{plate}/{shard}.npz`` holding, per field, the arrays
``{well}_s{site}_nuclei`` and ``{well}_s{site}_cells`` (uint32 label images, cell k contains
nucleus k). The archive is written with fixed zip timestamps so identical masks give
identical bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.io.tables import atomic_path
from hcsflow.wells import normalize_well


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
