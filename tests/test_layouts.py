"""File-name layouts on realistic names, including the real files in shared/data."""

import pytest

from conftest import EXAMPLE_HUMAN, needs_example_human
from hcsflow.layouts import (
    ImageKey,
    LayoutError,
    compile_layout,
    matches_layout,
    normalize_well,
    parse_filename,
    row_letters,
    row_number,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Plate1_A01_s1_w1.tif", ImageKey("A01", 1, "w1", "Plate1")),
        ("Plate1_P24_s9_w5.TIF", ImageKey("P24", 9, "w5", "Plate1")),
        # MetaXpress appends a GUID after the channel digit
        (
            "HCS-2024_03_B07_s3_w2A9C3E6F2-1F2B-4C3D-8E9F-0123456789AB.tif",
            ImageKey("B07", 3, "w2", "HCS-2024_03"),
        ),
        # single-site acquisitions have no _s part
        ("MyPlate_C05_w3.tif", ImageKey("C05", 1, "w3", "MyPlate")),
        # plate names may contain underscores
        ("BR00117010_exp_2_A01_s2_w4.tif", ImageKey("A01", 2, "w4", "BR00117010_exp_2")),
    ],
)
def test_imagexpress(name, expected):
    assert parse_filename(name, "imagexpress") == expected


@pytest.mark.parametrize(
    "name",
    [
        "Plate1_A01_s1_w1_thumb9E1D6A2C-0A2B-4C3D-8E9F-0123456789AB.tif",
        "Plate1_A01_s1_w1_thumb.tif",
        "Plate1_A01_s1_w1.txt",
        "Plate1_A01_s1.tif",
        "notes.HTD",
    ],
)
def test_imagexpress_ignores(name):
    assert parse_filename(name, "imagexpress") is None
    assert not matches_layout(name, "imagexpress")


@pytest.mark.parametrize(
    "name, layout",
    [
        ("Plate1_P24_s9_w5.TIF", "imagexpress"),
        ("Plate1_A01_s1_w1_thumb.tif", "imagexpress"),
        ("SQ00015054_P24f09d4.tif", "broad"),
        ("SQ00015054_P24f09d4.png", "imagexpress"),
        ("r16c24f09p03-ch5sk2fk1fl1.tiff", "phenix"),
        ("W0001_P16_T0001F012L01A03Z02C04.tif", "cv7000"),
        ("Index.idx.xml", "phenix"),
    ],
)
def test_matches_layout_agrees_with_parse_filename(name, layout):
    """The start-up listing keeps exactly the files discovery parses."""
    assert matches_layout(name, layout) is (parse_filename(name, layout) is not None)


@needs_example_human
def test_broad_on_real_files():
    files = sorted(p.name for p in EXAMPLE_HUMAN.glob("*.tif"))
    assert len(files) == 3
    keys = [parse_filename(f, "broad") for f in files]
    assert [k.channel for k in keys] == ["d0", "d1", "d2"]
    assert {(k.plate, k.well, k.site) for k in keys} == {("AS_09125_050116030001", "D03", 0)}


def test_broad_multi_digit():
    assert parse_filename("SQ00015054_P24f09d4.tif", "broad") == ImageKey(
        "P24", 9, "d4", "SQ00015054"
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("r01c01f01p01-ch1sk1fk1fl1.tiff", ImageKey("A01", 1, "ch1", None, 1, 1)),
        ("r16c24f09p03-ch5sk2fk1fl1.tiff", ImageKey("P24", 9, "ch5", None, 3, 2)),
        ("r32c48f01p01-ch2sk1fk1fl1.tiff", ImageKey("AF48", 1, "ch2", None, 1, 1)),
    ],
)
def test_phenix(name, expected):
    assert parse_filename(name, "phenix") == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "AssayPlate_Greiner_#781091_B03_T0001F001L01A01Z01C01.tif",
            ImageKey("B03", 1, "C01", "AssayPlate_Greiner_#781091", 1, 1),
        ),
        ("W0001_P16_T0001F012L01A03Z02C04.tif", ImageKey("P16", 12, "C04", "W0001", 2, 1)),
    ],
)
def test_cv7000(name, expected):
    assert parse_filename(name, "cv7000") == expected


def test_regex_layout():
    layout = (
        r"regex:^(?P<plate>[^-]+)-(?P<well>[A-P]\d+)-f(?P<site>\d+)-(?P<channel>[A-Za-z]+)\.tif$"
    )
    assert parse_filename("PL7-B3-f2-Hoechst.tif", layout) == ImageKey("B03", 2, "Hoechst", "PL7")
    assert parse_filename("PL7-B3-Hoechst.tif", layout) is None


def test_regex_row_column_groups():
    layout = r"regex:^r(?P<row>\d+)_c(?P<column>\d+)_s(?P<site>\d+)_(?P<channel>\w+)\.png$"
    assert parse_filename("r3_c12_s1_GFP.png", layout) == ImageKey("C12", 1, "GFP")


@pytest.mark.parametrize(
    "layout, message",
    [
        ("operetta", "unknown layout 'operetta'"),
        ("regex:(?P<well>[A-P", "not a valid regular expression"),
        (r"regex:(?P<well>\w+)_(?P<channel>\w+)", "lacks the named group(s) site"),
        (r"regex:(?P<site>\d+)_(?P<channel>\w+)", "well (or row and column)"),
    ],
)
def test_bad_layouts(layout, message):
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_layout(layout)


def test_wells():
    assert normalize_well("a1") == "A01"
    assert normalize_well("P024") == "P24"
    assert [row_letters(n) for n in (1, 16, 26, 27, 32)] == ["A", "P", "Z", "AA", "AF"]
    assert all(row_number(row_letters(n)) == n for n in range(1, 60))
    for bad in ("", "1A", "A0", "A-1"):
        with pytest.raises(ValueError, match="not a well name"):
            normalize_well(bad)
