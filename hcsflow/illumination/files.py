"""Illumination files: the npz archive of an estimate, its log line and its picture."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from hcsflow.io import atomic_path


def save(
    path: str | os.PathLike[str],
    flatfield: np.ndarray,
    darkfield: np.ndarray,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write ``flatfield``, ``darkfield`` (float32) and ``meta`` (JSON) to an npz file, atomically.

    The archive has fixed timestamps, so equal inputs give byte-identical files.

    Parameters
    ----------
    path : path
        Destination ``.npz`` file.
    flatfield, darkfield : ndarray of shape (H, W)
    meta : mapping, optional
        JSON-serialisable description (method, fields used, configuration).
    """
    flat = np.asarray(flatfield, dtype=np.float32)
    dark = np.asarray(darkfield, dtype=np.float32)
    if flat.ndim != 2 or flat.shape != dark.shape:
        raise ValueError(
            f"cannot save {path}: flat-field {flat.shape} and dark-field {dark.shape} must be "
            "2-D of the same shape"
        )
    arrays = {
        "flatfield": flat,
        "darkfield": dark,
        "meta": np.array(json.dumps(dict(meta or {}), sort_keys=True, default=str)),
    }
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def load(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a file written by :func:`save`.

    Returns
    -------
    flatfield, darkfield : ndarray of shape (H, W), float32
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            flat, dark = z["flatfield"], z["darkfield"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read illumination file {path}: {exc}") from exc
    return flat.astype(np.float32, copy=False), dark.astype(np.float32, copy=False)


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` record stored by :func:`save` (``{}`` if absent)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else {}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def summarize(meta: Mapping[str, Any], flatfield: np.ndarray, darkfield: np.ndarray) -> str:
    """One readable line about an estimate, for a job's log.

    Parameters
    ----------
    meta : mapping
        The record stored with the estimate (:meth:`IlluminationResult.meta` plus ``group``,
        ``channel`` and, when written for one plate, ``plate``), as :func:`load_meta` returns it.
    flatfield, darkfield : ndarray of shape (H, W)
        The estimate.

    Returns
    -------
    str
        For example ``"channel DNA of P1: basic from 180 of 200 fields (left out: 12 blank,
        8 saturated); flat-field 0.8213 to 1.124; dark-field 95.3 to 110.2 (mean 101.4); fit:
        baseline_cv 0.12, darkfield_model surface"``.
    """
    where = f"channel {meta.get('channel', '?')} of {meta.get('group', '?')}"
    if meta.get("plate") not in (None, meta.get("group")):
        where += f" (for plate {meta['plate']})"
    line = (
        f"{where}: {meta.get('method', '?')} from {meta.get('n_used', '?')} of "
        f"{meta.get('n_fields', '?')} fields"
    )
    excluded = meta.get("excluded") or {}
    if excluded:
        line += " (left out: " + ", ".join(f"{n} {why}" for why, n in excluded.items()) + ")"
    flat = np.asarray(flatfield, dtype=np.float64)
    dark = np.asarray(darkfield, dtype=np.float64)
    line += f"; flat-field {_fmt(float(flat.min()))} to {_fmt(float(flat.max()))}"
    if float(np.ptp(dark)) == 0.0:
        line += f"; dark-field constant {_fmt(float(dark.flat[0]))}"
    else:
        line += (
            f"; dark-field {_fmt(float(dark.min()))} to {_fmt(float(dark.max()))} "
            f"(mean {_fmt(float(dark.mean()))})"
        )
    fit = meta.get("fit") or {}
    if fit:
        line += "; fit: " + ", ".join(f"{k} {_fmt(v)}" for k, v in fit.items())
    return line


def dark_note(details: Mapping[str, Any]) -> str:
    """One line on where the dark-field came from, for the plot (``""`` when nothing to say).

    Parameters
    ----------
    details : mapping
        :attr:`IlluminationResult.details` (or the ``fit`` record of :func:`load_meta`).

    Returns
    -------
    str
        E.g. ``"dark-field: given (number)"``, ``"dark-field: fitted, level 101.3"`` or
        ``"dark-field left out: <reason> (fitted level 114.5)"``.
    """
    dark = details.get("dark")
    if dark in ("number", "frame"):
        return f"dark-field: given ({dark})"
    if dark == "none":
        return "dark-field: none (configured)"
    if "dark_determined" not in details:
        return ""
    if details["dark_determined"]:
        return f"dark-field: fitted, level {_fmt(details.get('dark_level'))}"
    return (
        f"dark-field left out: {details.get('dark_reason', 'not determined')} "
        f"(fitted level {_fmt(details.get('dark_level_rejected'))})"
    )


def plot(
    path: str | os.PathLike[str],
    flatfield: np.ndarray,
    darkfield: np.ndarray,
    title: str = "",
    note: str = "",
) -> None:
    """Write a PNG with the flat-field and dark-field side by side, atomically.

    Parameters
    ----------
    path : path
        Destination ``.png`` file.
    flatfield, darkfield : ndarray of shape (H, W)
    title : str
        Figure title (e.g. plate and channel).
    note : str
        A line printed under the panels (e.g. :func:`dark_note`: why the dark-field was left
        out).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, img, label, cmap in (
        (axes[0], flatfield, "flat-field (mean 1)", "viridis"),
        (axes[1], darkfield, "dark-field (raw units)", "magma"),
    ):
        im = ax.imshow(np.asarray(img), cmap=cmap)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if note:
        import textwrap

        fig.subplots_adjust(bottom=0.2)
        fig.text(0.5, 0.02, textwrap.fill(note, 110), ha="center", va="bottom", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
