"""The segmentation rules on a tiny simulated plate: masks, QC table, overlays, lint, reruns."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_snakemake, segmentation_snakefile
from hcsflow import illumination as il
from hcsflow.io import read_masks, read_provenance, read_table
from hcsflow.segmentation.metrics import f1_at
from hcsflow.simulate import simulate_plate

SNAKEFILE = segmentation_snakefile()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A workflow folder with the segmentation rules and a 3-well x 2-site simulated plate."""
    root = tmp_path_factory.mktemp("segwf")
    pm = pd.DataFrame(
        {
            "well": ["A01", "A02", "B01"],
            "compound": ["DMSO", "c1", "c2"],
            "dose_um": [0.0, 1.0, 1.0],
            "role": ["negcon", "trt", "trt"],
            "moa": ["", "m1", "m1"],
            "target": ["", "t1", "t1"],
        }
    )
    simulate_plate(root / "S1", plate="S1", sites=2, size=192, platemap=pm, n_workers=1)
    shutil.copytree(REPO / "config", root / "config")
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "plates.tsv").write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        f"S1\t{root}/S1/images\timagexpress\t{root}/S1/platemap.csv\tB1\n"
    )
    (root / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\n"
        "segmentation: {method: classical, threads: 1, overlay_fields: 2, overlay_crop: 128}\n"
        "shards: {wells_per_shard: 2}\n"
    )
    return root


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_snakemake(root, *args, timeout=600)


def test_segment_rules_lint_clean(workdir):
    lint = snakemake(workdir, "--lint")
    out = lint.stdout + lint.stderr
    bad = [ln for ln in out.splitlines() if ln.startswith("Lints for") and "segment" in ln]
    assert not bad, out


def test_segment_workflow_writes_masks_qc_and_overlays(workdir):
    run = snakemake(workdir, "-c2")
    assert run.returncode == 0, run.stderr[-3000:]
    res = workdir / "results"
    assert sorted(p.name for p in (res / "masks" / "S1").glob("*.npz")) == ["000.npz", "001.npz"]
    qc = pd.concat(read_table(p) for p in sorted((res / "segmentation" / "S1").glob("*.parquet")))
    assert list(qc["Metadata_Well"]) == ["A01", "A01", "A02", "A02", "B01", "B01"]
    assert {
        "Count_Nuclei",
        "Count_Cells",
        "nuclei_outside_cells",
        "cells_without_nucleus",
        "flags",
    } <= set(qc.columns)
    prov = read_provenance(res / "segmentation" / "S1" / "000.parquet")
    assert prov["step"] == "segment" and prov["config"]["segmentation"]["method"] == "classical"
    # masks match the simulator's truth and the QC counts
    truth = np.load(workdir / "S1" / "truth" / "masks" / "A02_s2.npz")
    nuclei, cells = read_masks(res, "S1", "A02", 2)
    assert nuclei.shape == (192, 192) and nuclei.dtype == np.uint32
    assert f1_at(nuclei, truth["nuclei"]) >= 0.8
    row = qc[(qc["Metadata_Well"] == "A02") & (qc["Metadata_Site"] == 2)].iloc[0]
    assert row["Count_Cells"] == len(np.unique(cells)) - 1
    assert row["Count_Nuclei"] == len(np.unique(nuclei)) - 1
    png = res / "qc" / "S1_overlays.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (res / "logs" / "segment" / "S1" / "000.log").exists()
    assert (res / "benchmarks" / "segment" / "S1" / "000.tsv").exists()


def test_deep_method_with_illumination_is_accurate_and_reproducible(workdir):
    """The default path: illumination estimated, applied in memory, shipped network."""
    (workdir / "deep.yaml").write_text(
        "plates: plates.tsv\nresults: results_deep\n"
        "segmentation: {method: deep, threads: 1, overlay_fields: 1, overlay_crop: 128}\n"
        "shards: {wells_per_shard: 2}\n"
    )
    args = ["--configfile", "deep.yaml", "-c2"]
    run = snakemake(workdir, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    res = workdir / "results_deep"
    assert sorted(p.name for p in (res / "illumination" / "S1").glob("*.npz")) == [
        f"{ch}.npz" for ch in sorted(("DNA", "ER", "RNA", "AGP", "Mito"))
    ]
    prov = read_provenance(res / "segmentation" / "S1" / "001.parquet")
    assert prov["config"]["segmentation"]["method"] == "deep"
    f1_nuclei, f1_cells = [], []
    for well, site in (("A01", 1), ("A02", 2), ("B01", 1)):
        truth = np.load(workdir / "S1" / "truth" / "masks" / f"{well}_s{site}.npz")
        nuclei, cells = read_masks(res, "S1", well, site)
        f1_nuclei.append(f1_at(nuclei, truth["nuclei"]))
        f1_cells.append(f1_at(cells, truth["cells"]))
    assert np.mean(f1_nuclei) >= 0.9, f1_nuclei
    assert np.mean(f1_cells) >= 0.8, f1_cells
    # rerunning a shard from scratch gives byte-identical masks and QC table
    before = [
        (res / d / "S1" / f).read_bytes()
        for d, f in (("masks", "000.npz"), ("segmentation", "000.parquet"))
    ]
    (res / "masks" / "S1" / "000.npz").unlink()
    (res / "segmentation" / "S1" / "000.parquet").unlink()
    assert snakemake(workdir, *args).returncode == 0
    after = [
        (res / d / "S1" / f).read_bytes()
        for d, f in (("masks", "000.npz"), ("segmentation", "000.parquet"))
    ]
    assert after == before


def test_batch_illumination_is_estimated_once_per_batch(workdir, tmp_path):
    """group_by: batch fits one estimate per batch x channel; each plate gets a copy."""
    shutil.copytree(workdir / "config", tmp_path / "config")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    images, pm = workdir / "S1" / "images", workdir / "S1" / "platemap.csv"
    (tmp_path / "plates.tsv").write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        f"S1\t{images}\timagexpress\t{pm}\tB1\n"
        f"S2\t{images}\timagexpress\t{pm}\tB1\n"
    )
    (tmp_path / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\n"
        "illumination: {group_by: batch, min_fields: 4, method: mean_smooth}\n"
    )
    targets = [f"results/illumination/{p}/DNA.npz" for p in ("S1", "S2")]
    run = snakemake(tmp_path, "-c2", *targets)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = {}
    for line in run.stdout.splitlines() + run.stderr.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0].startswith(("illumination", "disc")):
            counts[parts[0]] = int(parts[1])
    assert counts == {"discover": 2, "illumination": 2, "illumination_batch": 1}, counts
    res = tmp_path / "results" / "illumination"
    batch_flat, batch_dark = il.load(res / "batches" / "B1" / "DNA.npz")
    batch_meta = il.load_meta(res / "batches" / "B1" / "DNA.npz")
    assert batch_meta["plates"] == ["S1", "S2"] and batch_meta["group"] == "batch B1"
    assert batch_meta["n_fields"] == 12  # 3 wells x 2 sites of each plate
    for plate in ("S1", "S2"):
        flat, dark = il.load(res / plate / "DNA.npz")
        np.testing.assert_array_equal(flat, batch_flat)
        np.testing.assert_array_equal(dark, batch_dark)
        assert il.load_meta(res / plate / "DNA.npz")["plate"] == plate
        assert (res / plate / "DNA.png").read_bytes() == (
            res / "batches" / "B1" / "DNA.png"
        ).read_bytes()
    assert not np.allclose(batch_flat, 1.0)  # the simulated vignetting was estimated


def test_bad_image_stops_discovery_or_is_dropped(workdir):
    """An 8-bit DNA file among 16-bit ones: stop names it; drop finishes the other fields."""
    import tifffile

    images = workdir / "S1_bad" / "images"
    shutil.copytree(workdir / "S1" / "images", images)
    bad = next(images.glob("*A02_s2_w1*.tif"))
    tifffile.imwrite(bad, (tifffile.imread(bad) // 256).astype(np.uint8))
    (workdir / "bad.tsv").write_text(
        "plate\timages\tlayout\tplatemap\tbatch\n"
        f"S1\t{images}\timagexpress\t{workdir}/S1/platemap.csv\tB1\n"
    )
    over = (
        "plates: bad.tsv\nresults: results_bad\n"
        "segmentation: {method: classical, threads: 1, overlay_fields: 6, overlay_crop: 64}\n"
        "illumination: {method: none}\nshards: {wells_per_shard: 2}\n"
    )
    (workdir / "bad.yaml").write_text(over)
    run = snakemake(workdir, "--configfile", "bad.yaml", "-c1")
    assert run.returncode != 0
    log = (workdir / "results_bad" / "logs" / "discover" / "S1.log").read_text()
    assert f"plate S1 well A02 site 2 channel DNA: image {bad}: uint8 (8-bit) pixels" in log
    assert not (workdir / "results_bad" / "manifest" / "S1.parquet").exists()

    (workdir / "bad.yaml").write_text(over + "discovery: {on_bad_image: drop}\n")
    run = snakemake(workdir, "--configfile", "bad.yaml", "-c1")
    assert run.returncode == 0, run.stderr[-3000:]
    res = workdir / "results_bad"
    qc = read_table(res / "qc" / "S1_discovery.parquet")
    rec = qc[qc["Issue"] == "bad_image"]
    # File is relative to the plate's image folder, as the manifest's paths
    assert rec[["Metadata_Well", "Metadata_Site", "Channel", "File"]].values.tolist() == [
        ["A02", 2, "DNA", bad.name]
    ]
    seg = pd.concat(read_table(p) for p in sorted((res / "segmentation" / "S1").glob("*.parquet")))
    assert list(zip(seg["Metadata_Well"], seg["Metadata_Site"], strict=True)) == [
        ("A01", 1),
        ("A01", 2),
        ("A02", 1),
        ("B01", 1),
        ("B01", 2),
    ]
    assert (res / "qc" / "S1_overlays.png").exists()
