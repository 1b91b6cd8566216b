"""Bad image files (issue 15, items 1 and 3): found from headers at discovery, named everywhere.

Each kind of bad file -- one 8-bit file among 16-bit ones, a field of another shape, an empty
file, a file cut short -- stops discovery with a message naming the file, well, site and
channel (``discovery.on_bad_image: stop``), or is left out of the manifest and recorded in the
discovery QC table (``drop``). A file whose header is fine but whose data cannot be decoded is
named by the stage that reads it, and skipped by it with ``drop``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import CHANNELS3, write_platemap, write_tif
from hcsflow import illumination as il
from hcsflow.discover import DiscoveryError, discover_plate
from hcsflow.io import BadImageError, read_field, read_image_header, write_masks

SHAPE = (8, 8)


@pytest.fixture
def plate(tmp_path: Path):
    """3 wells x 2 sites x 3 channels of 16-bit 8x8 TIFFs and a plate map."""
    images = tmp_path / "images"
    for well in ("A01", "A02", "B01"):
        for site in (1, 2):
            for ch in (1, 2, 3):
                write_tif(images / f"P1_{well}_s{site}_w{ch}.tif", value=100 * ch, shape=SHAPE)
    pm = write_platemap(tmp_path / "platemap.csv", ["A01", "A02", "B01"])
    return images, pm


def eight_bit(path: Path) -> str:
    tifffile.imwrite(path, np.full(SHAPE, 50, dtype=np.uint8))
    return "uint8 (8-bit) pixels, but 5 file(s) of channel ER are uint16 (16-bit)"


def wrong_shape(path: Path) -> str:
    tifffile.imwrite(path, np.full((6, 6), 50, dtype=np.uint16))
    return "image of shape (6, 6), but 17 file(s) of plate P1 have (8, 8)"


def empty(path: Path) -> str:
    path.write_bytes(b"")
    return "empty file (0 bytes)"


def truncated(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated: its image data end at byte"


BAD = {"eight_bit": eight_bit, "wrong_shape": wrong_shape, "empty": empty, "truncated": truncated}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_stops_discovery_naming_file_well_site_channel(plate, kind):
    images, pm = plate
    bad = images / "P1_A02_s2_w2.tif"
    reason = BAD[kind](bad)
    with pytest.raises(DiscoveryError) as info:
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    msg = str(info.value)
    assert f"plate P1 well A02 site 2 channel ER: image {bad}: {reason}" in msg
    assert "discovery.on_bad_image: drop" in msg
    assert "1 bad image file(s)" in msg  # only the odd file, not its neighbours


@pytest.mark.parametrize("kind", sorted(BAD))
def test_drop_leaves_the_field_out_and_records_it(plate, kind):
    images, pm = plate
    bad = images / "P1_A02_s2_w2.tif"
    reason = BAD[kind](bad)
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_bad_image="drop")
    fields = list(zip(d.manifest["Metadata_Well"], d.manifest["Metadata_Site"], strict=True))
    assert fields == [("A01", 1), ("A01", 2), ("A02", 1), ("B01", 1), ("B01", 2)]
    rec = d.qc[d.qc["Issue"] == "bad_image"]
    assert len(rec) == 1
    row = rec.iloc[0]
    assert (row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"]) == ("P1", "A02", 2)
    # relative to the plate's image folder, as the manifest's paths
    assert row["Channel"] == "ER" and row["File"] == "P1_A02_s2_w2.tif"
    assert row["Detail"].startswith(reason)
    # the QC table keeps one schema whether or not something was dropped
    assert list(d.qc.columns) == [
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Site",
        "Issue",
        "Channel",
        "File",
        "Detail",
    ]


def test_good_plate_is_unchanged_by_the_switch(plate):
    images, pm = plate
    a = discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    b = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_bad_image="drop")
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.qc, b.qc)
    assert len(a.manifest) == 6 and (a.qc["Issue"] != "bad_image").all()


def test_every_bad_file_is_listed_and_the_majority_sets_the_reference(plate):
    images, pm = plate
    # three 8-bit DNA files out of six, and one Mito file of another shape
    for well, site in (("A01", 1), ("A02", 1), ("B01", 2)):
        tifffile.imwrite(images / f"P1_{well}_s{site}_w1.tif", np.ones(SHAPE, np.uint8))
    tifffile.imwrite(images / "P1_A01_s2_w3.tif", np.ones((4, 4), np.uint16))
    with pytest.raises(DiscoveryError) as info:
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3)
    lines = [ln.strip() for ln in str(info.value).splitlines() if "P1 well" in ln]
    # ties (3 uint8 vs 3 uint16) go to the first field in well/site order: A01 s1 is uint8
    assert [ln.split(": image")[0] for ln in lines] == [
        "plate P1 well A01 site 2 channel DNA",
        "plate P1 well A01 site 2 channel Mito",
        "plate P1 well A02 site 2 channel DNA",
        "plate P1 well B01 site 1 channel DNA",
    ]
    d = discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_bad_image="drop")
    assert sorted(
        set(zip(d.manifest["Metadata_Well"], d.manifest["Metadata_Site"], strict=True))
    ) == [
        ("A01", 1),
        ("A02", 1),
        ("B01", 2),
    ]
    assert (d.qc["Issue"] == "bad_image").sum() == 4


def test_bad_switch_value_is_refused(plate):
    images, pm = plate
    with pytest.raises(DiscoveryError, match="discovery.on_bad_image must be one of stop, drop"):
        discover_plate("P1", images, "imagexpress", pm, CHANNELS3, on_bad_image="skip")


def test_header_is_read_without_decoding(tmp_path):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((5, 7), np.uint16), compression="zlib")
    _corrupt_pixels(path)
    h = read_image_header(path)  # header fine, pixels not decodable
    assert (h.shape, h.dtype, h.bits, h.kind) == ((5, 7), "uint16", 16, "uint16 (16-bit)")
    with pytest.raises(BadImageError, match=f"image {path}: cannot be read"):
        read_field(_row(path), ["DNA"])


def test_bad_image_error_survives_pickling():
    err = BadImageError("/x.tif", "empty file (0 bytes)", plate="P", well="A01", site=2)
    back = pickle.loads(pickle.dumps(err.at(channel="DNA")))
    assert str(back) == "plate P well A01 site 2 channel DNA: image /x.tif: empty file (0 bytes)"
    assert back.record()["Channel"] == "DNA" and back.record()["Metadata_Site"] == 2


# --- stages that decode: a file that passes the header check but not decoding --------------


def _corrupt_pixels(path: Path) -> None:
    """Overwrite a compressed TIFF's pixel data in place: same size, valid header."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))


def _row(path: Path, well: str = "A01", site: int = 1) -> dict:
    return {
        "Metadata_Plate": "P1",
        "Metadata_Well": well,
        "Metadata_Site": site,
        "PathName_DNA": str(path.parent),
        "FileName_DNA": path.name,
    }


@pytest.fixture
def fields(tmp_path: Path):
    """Four single-channel 16x16 fields (wells A01..A04), A03's pixels not decodable."""
    rng = np.random.default_rng(0)
    rows = []
    for i, well in enumerate(("A01", "A02", "A03", "A04")):
        path = tmp_path / f"{well}.tif"
        img = (1000 + 200 * rng.random((16, 16))).astype(np.uint16)
        img[4:10, 4:10] += 3000 + 100 * i  # one bright object per field
        tifffile.imwrite(path, img, compression="zlib")
        rows.append(_row(path, well))
    _corrupt_pixels(tmp_path / "A03.tif")
    return pd.DataFrame(rows), tmp_path / "A03.tif"


def test_measure_names_or_drops_an_undecodable_field(fields, tmp_path):
    from hcsflow.features.shard import measure_fields

    manifest, bad = fields
    lab = np.zeros((16, 16), np.uint32)
    lab[4:10, 4:10] = 1
    masks = tmp_path / "masks.npz"
    write_masks(masks, {(w, 1): (lab, lab) for w in manifest["Metadata_Well"] if w != "A03"})
    with pytest.raises(BadImageError) as info:
        measure_fields(manifest, ["DNA"], masks)
    assert str(info.value).startswith(f"plate P1 well A03 site 1 channel DNA: image {bad}")
    dropped: list[BadImageError] = []
    cells, quality = measure_fields(manifest, ["DNA"], masks, on_bad_image="drop", dropped=dropped)
    assert list(quality["Metadata_Well"]) == ["A01", "A02", "A04"]
    assert list(cells["Metadata_Well"]) == ["A01", "A02", "A04"]
    assert [(e.well, e.site, e.channel, e.path) for e in dropped] == [("A03", 1, "DNA", str(bad))]
    # the other fields are measured as without the bad one
    good, _ = measure_fields(manifest[manifest["Metadata_Well"] != "A03"], ["DNA"], masks)
    pd.testing.assert_frame_equal(cells, good)


def test_segmentation_names_a_shape_that_does_not_match_the_flatfield(fields):
    from hcsflow.segmentation.segmenter import Segmenter
    from hcsflow.segmentation.shard import segment_fields

    manifest, bad = fields
    good = manifest[manifest["Metadata_Well"] != "A03"].copy()
    odd = Path(good.iloc[1]["PathName_DNA"]) / "A02.tif"
    tifffile.imwrite(odd, np.full((12, 12), 1000, np.uint16))
    channels = [{"name": "DNA", "id": "w1", "role": "nuclear"}]
    seg = Segmenter.load(method="classical", min_nucleus_area_um2=1.0)
    illum = {"DNA": (np.ones((16, 16), np.float32), np.zeros((16, 16), np.float32))}
    with pytest.raises(BadImageError) as info:
        segment_fields(good, channels, seg, 0.65, illumination=illum)
    assert str(info.value) == (
        f"plate P1 well A02 site 1 channel DNA: image {odd}: has shape (12, 12), but the DNA "
        "flat-field has (16, 16)"
    )
    dropped: list[BadImageError] = []
    masks, qc = segment_fields(
        manifest, channels, seg, 0.65, illumination=illum, on_bad_image="drop", dropped=dropped
    )
    assert list(qc["Metadata_Well"]) == ["A01", "A04"]
    assert sorted(masks) == [("A01", 1), ("A04", 1)]
    assert [(e.well, e.reason.split(" ")[0]) for e in dropped] == [
        ("A02", "has"),
        ("A03", "cannot"),
    ]


def test_illumination_names_or_drops_an_undecodable_field(fields):
    manifest, bad = fields
    with pytest.raises(BadImageError) as info:
        il.estimate_from_manifest(manifest, "DNA", "mean_smooth", min_fields=1)
    assert str(info.value).startswith(f"plate P1 well A03 site 1 channel DNA: image {bad}")
    with pytest.warns(il.IlluminationWarning, match="left out of the estimate"):
        res = il.estimate_from_manifest(
            manifest, "DNA", "mean_smooth", min_fields=1, on_bad_image="drop"
        )
    assert res.n_fields == 3
    meta = res.meta()
    assert [(r["Metadata_Well"], r["Channel"], r["File"]) for r in meta["dropped"]] == [
        ("A03", "DNA", str(bad))
    ]
    clean = il.estimate_from_manifest(
        manifest[manifest["Metadata_Well"] != "A03"], "DNA", "mean_smooth", min_fields=1
    )
    np.testing.assert_array_equal(res.flatfield, clean.flatfield)
    assert "dropped" not in clean.meta()
