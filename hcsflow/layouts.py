"""File-name layouts of high-content imagers.

A layout turns an image file name into the key of the image it holds: plate (when the name
carries one), well, site (field), channel id, and optionally z-plane and time point. Channel ids
are returned exactly as they appear in the name (``w1``, ``d0``, ``ch1``, ``C01``) so that the
configuration can name them the way users see them.

Supported layouts
-----------------
``imagexpress``
    MetaXpress / ImageXpress: ``{plate}_{well}_s{site}_w{n}.tif``, with an optional GUID glued
    after the channel digit (``..._w1A1B2C3D4-....tif``); ``_s{site}`` is absent for single-site
    acquisitions (site 1); ``_thumb`` files are thumbnails and ignored.
``broad``
    The Broad Institute naming: ``{plate}_{well}f{site:02d}d{n}.tif``
    (e.g. ``AS_09125_050116030001_D03f00d0.tif``).
``phenix``
    PerkinElmer/Revvity Opera and Operetta Phenix: ``r01c01f01p01-ch1sk1fk1fl1.tiff``
    (row and column numbers, field, plane, channel, time point); the plate comes from the sheet.
``cv7000``
    Yokogawa CV7000/CV8000: ``{prefix}_{well}_T0001F001L01A01Z01C01.tif``.
``regex:<pattern>``
    Any other naming, by a regular expression with named groups ``well``, ``site``, ``channel``
    and optional ``plate``, ``z``, ``t`` (``row`` and ``column`` may replace ``well``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from hcsflow.wells import normalize_well, row_letters

# well names live in hcsflow.wells; these names stay importable from here
from hcsflow.wells import row_number as row_number
from hcsflow.wells import split_well as split_well

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LAYOUTS = ("imagexpress", "broad", "phenix", "cv7000")

_WELL = r"[A-Za-z]{1,2}\d{1,3}"
_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

_PATTERNS = {
    "imagexpress": (
        rf"^(?P<plate>.+?)_(?P<well>{_WELL})(?:_s(?P<site>\d+))?_(?P<channel>w\d+)"
        rf"(?:{_GUID})?\.tiff?$"
    ),
    "broad": rf"^(?P<plate>.+)_(?P<well>{_WELL})f(?P<site>\d+)(?P<channel>d\d+)\.tiff?$",
    "phenix": (
        r"^r(?P<row>\d+)c(?P<column>\d+)f(?P<site>\d+)p(?P<z>\d+)-(?P<channel>ch\d+)"
        r"sk(?P<t>\d+)fk\d+fl\d+\.tiff?$"
    ),
    "cv7000": (
        rf"^(?P<plate>.+)_(?P<well>{_WELL})_T(?P<t>\d+)F(?P<site>\d+)L\d+A\d+"
        r"Z(?P<z>\d+)(?P<channel>C\d+)\.tiff?$"
    ),
}


class LayoutError(ValueError):
    """A layout name or regular expression that cannot be used."""


@dataclass(frozen=True)
class ImageKey:
    """What a file name says about the image it holds."""

    well: str
    site: int
    channel: str
    plate: str | None = None
    z: int | None = None
    t: int | None = None


@lru_cache(maxsize=64)
def compile_layout(layout: str) -> re.Pattern[str]:
    """Compile a layout name or ``regex:<pattern>`` into a regular expression.

    Raises ``LayoutError`` for an unknown name, an invalid pattern, or a pattern without the
    required named groups.
    """
    if layout in _PATTERNS:
        return re.compile(_PATTERNS[layout], re.IGNORECASE)
    if not layout.startswith("regex:"):
        raise LayoutError(
            f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)} or regex:<pattern>"
        )
    try:
        pattern = re.compile(layout[len("regex:") :])
    except re.error as exc:
        raise LayoutError(f"layout {layout!r} is not a valid regular expression: {exc}") from exc
    groups = set(pattern.groupindex)
    has_well = "well" in groups or {"row", "column"} <= groups
    missing = [g for g in ("site", "channel") if g not in groups]
    if not has_well:
        missing.insert(0, "well (or row and column)")
    if missing:
        raise LayoutError(
            f"layout {layout!r} lacks the named group(s) {', '.join(missing)}; "
            "use (?P<well>...), (?P<site>...), (?P<channel>...) and optionally "
            "(?P<plate>...), (?P<z>...), (?P<t>...)"
        )
    return pattern


def _match(name: str, layout: str) -> re.Match[str] | None:
    lower = name.lower()
    if not lower.endswith(IMAGE_SUFFIXES) or "_thumb" in lower:
        return None
    return compile_layout(layout).match(name)


def matches_layout(name: str, layout: str) -> bool:
    """Whether a file name (not a path) is an image of a layout: its suffix, no thumbnail, and
    the layout's pattern, as :func:`parse_filename` checks them, without building the key."""
    return _match(name, layout) is not None


def parse_filename(name: str, layout: str) -> ImageKey | None:
    """Parse one file name (not a path) with a layout.

    Returns ``None`` for files that are not images of that layout (other suffixes, thumbnails,
    names that do not match).
    """
    m = _match(name, layout)
    if m is None:
        return None
    g = m.groupdict()
    if g.get("well") is not None:
        well = normalize_well(g["well"])
    else:
        row, col = g["row"], g["column"]
        row_label = row_letters(int(row)) if row.isdigit() else row.upper()
        well = normalize_well(f"{row_label}{int(col)}")
    site = int(g["site"]) if g.get("site") is not None else 1
    return ImageKey(
        well=well,
        site=site,
        channel=g["channel"],
        plate=g.get("plate"),
        z=int(g["z"]) if g.get("z") is not None else None,
        t=int(g["t"]) if g.get("t") is not None else None,
    )
