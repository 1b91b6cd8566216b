"""Well names of multi-well plates: parsing, formatting, plate order and plate formats.

A well is named by its row letters and column number. The workflow writes ``A01`` style
(two-digit column, ``AF48`` on a 1536-well plate); every function here also reads ``A1``,
``a1``, ``A001`` and surrounding whitespace, so that a user may name a well either way.
Row and column *indices* are zero-based (``A01`` -> (0, 0)); row *numbers* are one-based.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: A well name: one or two row letters and a column number (leading zeros allowed).
WELL_PATTERN = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")

#: Standard plate formats: wells -> (rows, columns).
PLATE_FORMATS: dict[int, tuple[int, int]] = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}


def split_well(well: str) -> tuple[str, int]:
    """Row letters (upper case) and one-based column of a well: ``a3`` -> (``A``, 3).

    Raises
    ------
    ValueError
        If ``well`` is not one or two letters followed by a column number of at least 1.
    """
    m = WELL_PATTERN.match(str(well).strip())
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"not a well name: {well!r} (expected a row letter and column, e.g. A01)")
    return m.group(1).upper(), int(m.group(2))


def row_number(letters: str) -> int:
    """One-based row number of plate row letters: ``A`` -> 1, ``P`` -> 16, ``AF`` -> 32."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - ord("A") + 1)
    return n


def row_letters(number: int) -> str:
    """Plate row letters of a one-based row number: 1 -> ``A``, 26 -> ``Z``, 27 -> ``AA``."""
    if number < 1:
        raise ValueError(f"row number must be >= 1, got {number}")
    letters = ""
    while number:
        number, rem = divmod(number - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def well_index(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well: ``A01`` and ``A1`` -> (0, 0), ``AF48`` -> (31, 47)."""
    letters, column = split_well(well)
    return row_number(letters) - 1, column - 1


def format_well(row: int, column: int) -> str:
    """Well name in ``A01`` form from zero-based row and column indices: (3, 2) -> ``D03``."""
    if row < 0 or column < 0:
        raise ValueError(f"row and column indices must be >= 0, got ({row}, {column})")
    return f"{row_letters(row + 1)}{column + 1:02d}"


def normalize_well(well: str) -> str:
    """A well name in ``A01`` form (``a1``, ``A1``, ``A001`` -> ``A01``).

    Raises
    ------
    ValueError
        If ``well`` is not a row letter followed by a column number.
    """
    letters, column = split_well(well)
    return f"{letters}{column:02d}"


def well_sort_key(well: str) -> tuple[int, int]:
    """Sort key giving plate order (A01, A02, ..., B01, ...; AA after Z; ``A1`` as ``A01``)."""
    return well_index(well)


def well_names(n_wells: int) -> list[str]:
    """Every well of a standard plate in row-major order (``A01``, ``A02``, ...).

    Parameters
    ----------
    n_wells : {96, 384, 1536}

    Returns
    -------
    list of str
    """
    if n_wells not in PLATE_FORMATS:
        raise ValueError(f"n_wells must be one of {sorted(PLATE_FORMATS)}, got {n_wells}")
    rows, cols = PLATE_FORMATS[n_wells]
    return [format_well(r, c) for r in range(rows) for c in range(cols)]


def plate_shape(wells: Sequence[str]) -> tuple[int, int]:
    """(rows, columns) of the smallest standard plate format that holds ``wells``.

    Wells beyond a 1536-well plate give the smallest grid that holds them.
    """
    rc = [well_index(w) for w in wells]
    need_r = max((r for r, _ in rc), default=0) + 1
    need_c = max((c for _, c in rc), default=0) + 1
    for r, c in sorted(PLATE_FORMATS.values()):
        if need_r <= r and need_c <= c:
            return r, c
    return need_r, need_c
