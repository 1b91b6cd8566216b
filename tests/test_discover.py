"""Plate discovery: manifests, plate-map joins and the promised errors."""

import shutil

import pandas as pd
import pytest

from conftest import CHANNELS3, EXAMPLE_HUMAN, needs_example_human, write_platemap, write_tif
from hcsflow.discover import DiscoveryError, discover_plate, probe_channels
from hcsflow.io import field_paths, resolve_paths
from hcsflow.platemap import PlatemapError, make_shards, read_platemap


def test_manifest_columns_and_join(imagexpress_plate):
    _, images, pm = imagexpress_plate
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, batch="B7")
    m = d.manifest
    assert len(m) == 4  # 2 wells x 2 sites
    assert list(m["Metadata_Well"]) == ["A01", "A01", "B02", "B02"]
    assert list(m["Metadata_Site"]) == [1, 2, 1, 2]
    assert list(m["Metadata_Row"]) == ["A", "A", "B", "B"]
    assert list(m["Metadata_Column"]) == [1, 1, 2, 2]
    assert set(m["Metadata_Batch"]) == {"B7"}
    for ch in ("DNA", "ER", "Mito"):
        assert f"FileName_{ch}" in m and f"PathName_{ch}" in m
    row = m.iloc[3]
    assert row["FileName_ER"] == "P1_B02_s2_w2.tif"
    # relative to the plate's image folder: "." for files directly in it
    assert row["PathName_ER"] == "."
    assert field_paths(row, ["ER"], images) == [images / "P1_B02_s2_w2.tif"]
    assert row["Metadata_Compound"] == "cmpd1" and row["Metadata_Dose"] == 1.5
    assert row["Metadata_Role"] == "trt" and row["Metadata_MoA"] == "moa1"
    assert m.iloc[0]["Metadata_Role"] == "negcon"
    # C03 is in the plate map but not imaged: recorded, not an error
    assert d.qc[["Metadata_Well", "Issue"]].values.tolist() == [["C03", "not_imaged"]]


def test_extra_platemap_columns_carried(tmp_path):
    images = tmp_path / "img"
    for ch in (1, 2, 3):
        write_tif(images / f"P_A01_s1_w{ch}.tif")
    pm = write_platemap(tmp_path / "pm.csv", ["A1"], {"cell_line": "U2OS", "smiles": "CCO"})
    m = discover_plate("P", images, "imagexpress", pm, CHANNELS3).manifest
    assert m.loc[0, "Metadata_cell_line"] == "U2OS"
    assert m.loc[0, "Metadata_smiles"] == "CCO"
    assert m.loc[0, "Metadata_Well"] == "A01"


def test_missing_channel_error_and_drop(imagexpress_plate):
    _, images, pm = imagexpress_plate
    (images / "P1_B02_s2_w3.tif").unlink()
    with pytest.raises(DiscoveryError, match=r"well B02 site 2 has no image of channel\(s\) Mito"):
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_missing_channel="drop")
    assert len(d.manifest) == 3
    dropped = d.qc[d.qc["Issue"] == "missing_channel"]
    assert dropped[["Metadata_Well", "Metadata_Site"]].values.tolist() == [["B02", 2]]


def test_unmapped_well_error_and_drop(imagexpress_plate):
    root, images, _ = imagexpress_plate
    pm = write_platemap(root / "pm2.csv", ["A01"])
    with pytest.raises(DiscoveryError, match="well B02 was imaged but is absent from plate map"):
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_unmapped_well="drop")
    assert set(d.manifest["Metadata_Well"]) == {"A01"}
    assert (d.qc["Issue"] == "unmapped_well").sum() == 2


def test_channel_matching_no_file(imagexpress_plate):
    _, images, pm = imagexpress_plate
    chans = CHANNELS3 + [{"name": "AGP", "id": "w4"}]
    with pytest.raises(
        DiscoveryError, match=r"channel AGP \(id 'w4'\) matches no file.*found there: w1, w2, w3"
    ):
        discover_plate("P1", images, "imagexpress", pm, chans)


def test_duplicate_image(imagexpress_plate):
    _, images, pm = imagexpress_plate
    write_tif(images / "sub" / "P1_A01_s1_w1.tif")
    with pytest.raises(DiscoveryError, match="two files for well A01 site 1 channel DNA") as info:
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    # both files named by their full path, although the manifest stores relative ones
    assert str(images / "sub" / "P1_A01_s1_w1.tif") in str(info.value)
    assert str(images / "P1_A01_s1_w1.tif") in str(info.value)


def test_paths_are_relative_to_the_image_folder(tmp_path):
    images = tmp_path / "plate" / "images"
    for well, sub in (("A01", "TimePoint_1"), ("B01", "TimePoint_1/ZStep_1")):
        for ch in (1, 2, 3):
            write_tif(images / sub / f"P_{well}_s1_w{ch}.tif", value=ch)
    pm = write_platemap(tmp_path / "pm.csv", ["A01", "B01"])
    m = discover_plate("P", images, "imagexpress", pm, CHANNELS3).manifest
    assert list(m["PathName_DNA"]) == ["TimePoint_1", "TimePoint_1/ZStep_1"]
    for row in m.to_dict("records"):
        for path in field_paths(row, ["DNA", "ER", "Mito"], images):
            assert path.is_file()
    # a manifest of several plates: one folder per plate
    other = dict(m.iloc[0], Metadata_Plate="Q", PathName_DNA=".")
    roots = {"P": images, "Q": tmp_path / "q"}
    assert field_paths(other, ["DNA"], roots) == [tmp_path / "q" / "P_A01_s1_w1.tif"]
    with pytest.raises(ValueError, match="no image folder given for plate 'Q'"):
        field_paths(other, ["DNA"], {"P": images})
    # CellProfiler LoadData table: absolute paths; the manifest itself is not modified
    load = resolve_paths(m, images)
    assert list(load["PathName_ER"]) == [
        str((images / "TimePoint_1").resolve()),
        str((images / "TimePoint_1" / "ZStep_1").resolve()),
    ]
    assert list(m["PathName_ER"]) == ["TimePoint_1", "TimePoint_1/ZStep_1"]


def test_manifest_does_not_depend_on_where_the_plate_lives(imagexpress_plate, tmp_path):
    root, images, pm = imagexpress_plate
    a = discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    b = discover_plate("P1", moved / "images", "imagexpress", moved / "platemap.csv", CHANNELS3)
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert a.listing_digest == b.listing_digest


def test_several_plates_in_one_folder(imagexpress_plate):
    _, images, pm = imagexpress_plate
    for ch in (1, 2, 3):
        write_tif(images / f"P2_A01_s1_w{ch}.tif")
    m = discover_plate("P1", images, "imagexpress", pm, CHANNELS3).manifest
    assert set(m["FileName_DNA"].str[:3]) == {"P1_"}
    with pytest.raises(DiscoveryError, match="several plates"):
        discover_plate("P9", images, "imagexpress", pm, CHANNELS3)


def test_phenix_planes(tmp_path):
    images = tmp_path / "Images"
    for p in (1, 2):
        for ch in (1, 2):
            write_tif(images / f"r02c03f01p0{p}-ch{ch}sk1fk1fl1.tiff")
    pm = write_platemap(tmp_path / "pm.csv", ["B03"])
    chans = [{"name": "DNA", "id": "ch1"}, {"name": "Actin", "id": "ch2"}]
    with pytest.raises(DiscoveryError, match="2 planes .* choose one with discovery.plane"):
        discover_plate("X", images, "phenix", pm, chans)
    m = discover_plate("X", images, "phenix", pm, chans, plane=2).manifest
    assert len(m) == 1 and m.loc[0, "FileName_DNA"] == "r02c03f01p02-ch1sk1fk1fl1.tiff"


@needs_example_human
def test_real_broad_folder(tmp_path):
    folder = EXAMPLE_HUMAN
    pm = write_platemap(tmp_path / "pm.csv", ["D03"])
    chans = [
        {"name": "DNA", "id": "d0", "role": "nuclear"},
        {"name": "PH3", "id": "d1"},
        {"name": "Actin", "id": "d2", "role": "cytoplasm"},
    ]
    d = discover_plate("AS_09125_050116030001", folder, "broad", pm, chans)
    assert len(d.manifest) == 1
    assert d.manifest.loc[0, "FileName_Actin"] == "AS_09125_050116030001_D03f00d2.tif"
    assert d.manifest.loc[0, "Metadata_Site"] == 0


def test_probe_stops_early(imagexpress_plate):
    _, images, _ = imagexpress_plate
    found, seen, n = probe_channels(images, "imagexpress", ["w1", "w2", "w3"])
    assert found == {"w1", "w2", "w3"} and n < 12
    found, seen, n = probe_channels(images, "imagexpress", ["w1", "w9"])
    assert found == {"w1"} and seen == {"w1", "w2", "w3"} and n == 12


def test_listing_digest_tracks_files(imagexpress_plate):
    _, images, pm = imagexpress_plate
    a = discover_plate("P1", images, "imagexpress", pm, CHANNELS3).listing_digest
    assert discover_plate("P1", images, "imagexpress", pm, CHANNELS3).listing_digest == a
    write_tif(images / "P1_A01_s1_w1.tif", value=7, shape=(9, 9))
    # a field of another shape is a bad image: dropped here, so that the digest can be read
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_bad_image="drop")
    assert d.listing_digest != a


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "well,compound,dose_um,role\nA01,DMSO,0,negcon\nA1,X,1,trt\n",
            "listed more than once: A01",
        ),
        ("well,compound,role\nA01,DMSO,negcon\n", "lacks column"),
        ("well,compound,dose_um,role\nA01,DMSO,0,control\n", "unknown role"),
        ("well,compound,dose_um,role\nZ,DMSO,0,negcon\n", "malformed well"),
        ("well,compound,dose_um,role\nA01,DMSO,ten,negcon\n", "dose_um is not a number in well"),
        ("well,compound,dose_um,role\nA01,,0,trt\n", "no compound given for well"),
    ],
)
def test_platemap_errors(tmp_path, body, message):
    path = tmp_path / "pm.csv"
    path.write_text(body)
    with pytest.raises(PlatemapError, match=message) as exc:
        read_platemap(path)
    assert str(path) in str(exc.value)


def test_platemap_normalizes_and_sorts(tmp_path):
    path = tmp_path / "pm.csv"
    path.write_text(
        "Well,Compound,Dose_uM,Role,extra\nb1,X,2,TRT,q\na10,DMSO,,negcon,r\na2,Y,1,trt,s\n"
    )
    pm = read_platemap(path)
    assert pm["Metadata_Well"].tolist() == ["A02", "A10", "B01"]
    assert pm["Metadata_Dose"].tolist() == [1.0, 0.0, 2.0]
    assert pm["Metadata_Role"].tolist() == ["trt", "negcon", "trt"]
    assert pm["Metadata_extra"].tolist() == ["s", "r", "q"]
    assert pm["Metadata_MoA"].tolist() == ["", "", ""]


def test_shards():
    wells = [f"{r}{c:02d}" for r in "BA" for c in (12, 1, 2)]
    shards = make_shards(wells, 4)
    assert shards == {"000": ["A01", "A02", "A12", "B01"], "001": ["B02", "B12"]}
    assert make_shards(list(reversed(wells)), 4) == shards
    with pytest.raises(ValueError):
        make_shards(wells, 0)
