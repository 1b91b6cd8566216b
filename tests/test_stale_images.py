"""Changed image folders rerun what depends on them; moving the project reruns nothing.

Each plate's image folder is listed when the workflow starts (``results/listing/{plate}.tsv``:
relative path, size, mtime), the listing is rewritten only when it changed, and it is an input
of the plate's discovery job. The end-to-end tests run discovery and segmentation of two small
simulated plates once, then dry-run copies of that project after one change each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import REPO, run_snakemake, segmentation_snakefile, write_tif
from hcsflow.io import field_paths, read_table
from hcsflow.listing import (
    HEADER,
    ListingEntry,
    ListingError,
    format_listing,
    list_images,
    should_list,
    update_listings,
    write_if_changed,
)
from hcsflow.simulate import simulate_plate

# --- the listing (library) -------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An ImageXpress folder with a sub-folder, hidden entries and files of no layout."""
    images = tmp_path / "images"
    write_tif(images / "P_A01_s1_w1.tif")
    write_tif(images / "P_A01_s1_w2.tif")
    write_tif(images / "TimePoint_1" / "P_B01_s1_w1.tif")
    write_tif(images / ".hidden" / "P_C01_s1_w1.tif")
    write_tif(images / ".P_D01_s1_w1.tif")
    write_tif(images / "P_A01_s1_w1_thumb.tif")
    (images / "notes.txt").write_text("plate notes")
    return images


def test_listing_is_relative_sorted_and_skips_hidden_entries(folder):
    entries = list_images(folder, "imagexpress")
    assert [e.path for e in entries] == [
        "P_A01_s1_w1.tif",
        "P_A01_s1_w2.tif",
        "TimePoint_1/P_B01_s1_w1.tif",
    ]
    st = (folder / "TimePoint_1" / "P_B01_s1_w1.tif").stat()
    assert (entries[2].size, entries[2].mtime_ns) == (st.st_size, st.st_mtime_ns)
    # without a layout every (non-hidden) file is listed
    assert [e.path for e in list_images(folder)] == [
        "P_A01_s1_w1.tif",
        "P_A01_s1_w1_thumb.tif",
        "P_A01_s1_w2.tif",
        "TimePoint_1/P_B01_s1_w1.tif",
        "notes.txt",
    ]


def test_listing_text_is_one_line_per_file():
    text = format_listing([ListingEntry("a\tb.tif", 3, 7), ListingEntry("c\\d\n.tif", 4, 8)])
    assert text == f"{HEADER}\na\\tb.tif\t3\t7\nc\\\\d\\n.tif\t4\t8\n"
    assert format_listing([]) == HEADER + "\n"


def test_listing_is_rewritten_only_when_the_folder_changed(folder, tmp_path):
    out = tmp_path / "listing"
    other = tmp_path / "other"
    write_tif(other / "Q_A01_s1_w1.tif")
    plates = [("P", folder, "imagexpress"), ("Q", other, "imagexpress")]
    assert update_listings(plates, out) == ["P", "Q"]
    listing = out / "P.tsv"
    assert listing.read_text().splitlines()[1].startswith("P_A01_s1_w1.tif\t")
    os.utime(listing, ns=(1_000_000_000, 1_000_000_000))
    assert update_listings(plates, out) == []
    assert listing.stat().st_mtime_ns == 1_000_000_000  # untouched
    # a re-imaged file (same size, new mtime), then a new field: only that plate
    path = folder / "P_A01_s1_w2.tif"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert update_listings(plates, out) == ["P"]
    assert listing.stat().st_mtime_ns > 1_000_000_000
    write_tif(other / "Q_A02_s1_w1.tif")
    assert update_listings(plates, out) == ["Q"]
    assert "Q_A02_s1_w1.tif" in (out / "Q.tsv").read_text()
    # files discovery ignores do not count
    (folder / "notes.txt").write_text("changed")
    write_tif(folder / ".hidden" / "P_C02_s1_w1.tif")
    assert update_listings(plates, out) == []


def test_listing_of_a_copy_with_mtimes_kept_is_the_same(folder, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    assert format_listing(list_images(copy)) == format_listing(list_images(folder))


def test_missing_folder_names_the_plate_and_writes_nothing(folder, tmp_path):
    out = tmp_path / "listing"
    plates = [("P", folder, "imagexpress"), ("GONE", tmp_path / "nowhere", "imagexpress")]
    with pytest.raises(ListingError) as info:
        update_listings(plates, out, sheet="plates.tsv")
    assert str(info.value) == (
        f"- plate sheet plates.tsv, plate GONE: image folder {tmp_path / 'nowhere'} does not exist"
    )
    assert not out.exists()
    with pytest.raises(ListingError, match="plate P: unknown layout 'nikon'"):
        update_listings([("P", folder, "nikon")], out)


def test_write_if_changed(tmp_path):
    path = tmp_path / "sub" / "x.tsv"
    assert write_if_changed(path, "a\n") is True
    assert write_if_changed(path, "a\n") is False
    assert write_if_changed(path, "b\n") is True and path.read_text() == "b\n"
    assert [p.name for p in path.parent.iterdir()] == ["x.tsv"]  # no temporary file left


@pytest.mark.parametrize(
    "mode, lists",
    [("default", True), ("DEFAULT", True), (None, True), ("subprocess", False), ("REMOTE", False)],
)
def test_only_the_main_process_lists_folders(mode, lists):
    assert should_list(mode) is lists


# --- the workflow ----------------------------------------------------------------------------

SNAKEFILE = segmentation_snakefile('[t for t in segmentation_targets() if t.endswith(".parquet")]')

PLATES = ("S1", "S2")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two simulated 2-well plates inside the project, discovered and segmented once."""
    root = tmp_path_factory.mktemp("stale") / "project"
    root.mkdir()
    pm = pd.DataFrame(
        {
            "well": ["A01", "A02"],
            "compound": ["DMSO", "c1"],
            "dose_um": [0.0, 1.0],
            "role": ["negcon", "trt"],
            "moa": ["", "m1"],
            "target": ["", "t1"],
        }
    )
    for seed, plate in enumerate(PLATES):
        simulate_plate(
            root / plate, plate=plate, sites=1, size=96, platemap=pm, seed=seed, n_workers=1
        )
    shutil.copytree(REPO / "config", root / "config")
    (root / "Snakefile").write_text(SNAKEFILE)
    # image folders relative to the project, as in the demo's plate sheet
    (root / "plates.tsv").write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        + "".join(f"{p}\t{p}/images\timagexpress\t{p}/platemap.csv\tB1\n" for p in PLATES)
    )
    (root / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\nillumination: {method: none}\n"
        "segmentation: {method: classical, threads: 1, overlay_fields: 1, overlay_crop: 64}\n"
    )
    run = run_snakemake(root, "-c2")
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def copy_project(project: Path, dest: Path) -> Path:
    """``cp -a`` of the project (modification times kept) to a new folder."""
    subprocess.run(["cp", "-a", str(project), str(dest)], check=True)
    return dest


def scheduled(root: Path) -> set[tuple[str, str | None]]:
    """(rule, plate) of every job a dry run schedules, ``rule all`` left out."""
    run = run_snakemake(root, "-n")
    assert run.returncode == 0, run.stderr[-3000:]
    jobs: list[list] = []
    for line in (run.stdout + run.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            jobs.append([m.group(1), None])
        elif jobs and (w := re.match(r"^\s+wildcards: .*plate=([^,\s]+)", line)):
            jobs[-1][1] = w.group(1)
    if not jobs:
        assert "Nothing to be done" in run.stdout + run.stderr, run.stdout + run.stderr
    return {(rule, plate) for rule, plate in jobs if rule != "all"}


def plate_jobs(plate: str) -> set[tuple[str, str]]:
    return {("discover", plate), ("segment", plate)}


def test_nothing_changed_nothing_to_do(project):
    assert scheduled(project) == set()


def test_rewritten_image_reruns_its_plate_only(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    path = root / "S1" / "images" / "S1_A02_s1_w3.tif"
    before = path.stat()
    tifffile.imwrite(path, tifffile.imread(path) // 2 + 1, compression="zlib")
    # a new modification time, whatever the file system's clock resolution
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert scheduled(root) == plate_jobs("S1")


def test_new_field_reruns_its_plate_only(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    images = root / "S2" / "images"
    for ch in range(1, 6):
        src = tifffile.imread(images / f"S2_A01_s1_w{ch}.tif")
        tifffile.imwrite(images / f"S2_A01_s2_w{ch}.tif", np.flipud(src), compression="zlib")
    assert scheduled(root) == plate_jobs("S2")


def test_moved_project_reruns_nothing(project, tmp_path):
    root = copy_project(project, tmp_path / "moved")
    assert scheduled(root) == set()
    # the copy's manifests point into the copy, not to the first folder
    manifest = read_table(root / "results" / "manifest" / "S1.parquet")
    assert set(manifest["PathName_DNA"]) == {"."}
    for row in manifest.to_dict("records"):
        for path in field_paths(row, ["DNA", "AGP"], root / "S1" / "images"):
            assert path.is_file() and str(path).startswith(str(root))


def test_jobs_do_not_list_folders(project, tmp_path):
    """A job re-reading the workflow (subprocess or cluster mode) leaves the listings alone."""
    root = copy_project(project, tmp_path / "p")
    listing = root / "results" / "listing" / "S1.tsv"
    before = (listing.read_bytes(), listing.stat().st_mtime_ns)
    write_tif(root / "S1" / "images" / "S1_B01_s1_w1.tif")
    run = run_snakemake(root, "-n", "--mode", "remote")  # as a SLURM job step runs it
    assert run.returncode == 0, run.stderr[-3000:]
    assert (listing.read_bytes(), listing.stat().st_mtime_ns) == before
    assert scheduled(root) >= {("discover", "S1")}  # the main process sees the new file
    assert listing.read_bytes() != before[0]


def test_missing_image_folder_stops_at_parse_time(project, tmp_path):
    root = copy_project(project, tmp_path / "p")
    with (root / "plates.tsv").open("a") as fh:
        fh.write("S3\tS3/images\timagexpress\tS1/platemap.csv\tB1\n")
    run = run_snakemake(root, "-n")
    assert run.returncode != 0
    assert "plate S3: image folder S3/images does not exist" in run.stderr
    assert not (root / "results" / "listing" / "S3.tsv").exists()
