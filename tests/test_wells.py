"""Well names: one parser for every module; ``D3`` and ``D03`` name the same well."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow import wells as W

SHORT_AND_LONG = [("A1", "A01"), ("D3", "D03"), ("p24", "P24"), (" H012 ", "H12"), ("AF48", "AF48")]


@pytest.mark.parametrize("short, long", SHORT_AND_LONG)
def test_both_spellings_of_a_well_agree_everywhere(short, long):
    assert W.normalize_well(short) == long
    assert W.well_index(short) == W.well_index(long)
    assert W.split_well(short) == W.split_well(long)
    assert W.well_sort_key(short) == W.well_sort_key(long)
    r, c = W.well_index(short)
    assert W.format_well(r, c) == long


@pytest.mark.parametrize("n_wells", [96, 384, 1536])
def test_plate_names_round_trip_in_plate_order(n_wells):
    names = W.well_names(n_wells)
    rows, cols = W.PLATE_FORMATS[n_wells]
    assert len(names) == len(set(names)) == rows * cols
    assert sorted(names, key=W.well_sort_key) == names  # row-major = plate order
    idx = np.array([W.well_index(w) for w in names])
    assert idx.min(axis=0).tolist() == [0, 0] and idx.max(axis=0).tolist() == [rows - 1, cols - 1]
    assert all(W.normalize_well(w) == w for w in names)
    assert W.plate_shape(names) == (rows, cols)
    assert W.plate_shape(names[:1]) == (8, 12)


def test_row_letters_and_sort_order():
    assert [W.row_letters(n) for n in (1, 16, 26, 27, 32)] == ["A", "P", "Z", "AA", "AF"]
    assert all(W.row_number(W.row_letters(n)) == n for n in range(1, 60))
    assert sorted(["AA01", "B2", "A10", "A2", "Z01"], key=W.well_sort_key) == [
        "A2",
        "A10",
        "B2",
        "Z01",
        "AA01",
    ]


@pytest.mark.parametrize("bad", ["", "1A", "A0", "A-1", "ABC1", "A1234"])
def test_bad_wells_raise(bad):
    for fn in (W.normalize_well, W.split_well, W.well_index, W.well_sort_key):
        with pytest.raises(ValueError, match="not a well name"):
            fn(bad)


def test_modules_share_the_parser():
    from hcsflow import layouts, platemap, report, simulate
    from hcsflow.analysis import adjacent_wells
    from hcsflow.simulate.plate import _well_rc

    assert layouts.normalize_well("D3") == "D03"
    assert platemap.well_sort_key("D3") == platemap.well_sort_key("D03")
    assert report.parse_well("D3") == report.parse_well("D03") == (3, 2)
    assert _well_rc("D3") == _well_rc("D03") == (3, 2)
    assert simulate.well_names(96) == W.well_names(96)
    assert adjacent_wells(["D3", "D04", "D5"]) and adjacent_wells(["D03", "D04", "D05"])


def test_read_masks_takes_either_spelling(tmp_path):
    from hcsflow.io import read_masks, write_masks

    rng = np.random.default_rng(0)
    masks = {
        (well, site): (
            rng.integers(0, 5, (6, 7)).astype(np.uint32),
            rng.integers(0, 5, (6, 7)).astype(np.uint32),
        )
        for well in ("D03", "D04")
        for site in (1, 2)
    }
    (tmp_path / "masks" / "P1").mkdir(parents=True)
    write_masks(tmp_path / "masks" / "P1" / "000.npz", masks)
    for well in ("D3", "D03", "d3"):
        nuclei, cells = read_masks(tmp_path, "P1", well, 2)
        np.testing.assert_array_equal(nuclei, masks[("D03", 2)][0])
        np.testing.assert_array_equal(cells, masks[("D03", 2)][1])
    with pytest.raises(KeyError, match="no masks for well"):
        read_masks(tmp_path, "P1", "D5", 1)
