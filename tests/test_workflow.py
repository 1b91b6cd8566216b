"""The workflow as users run it: dry run, lint, a real run, and errors before any job."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_snakemake, write_platemap, write_tif
from hcsflow.io import read_manifest, read_provenance


def snakemake(*args: str) -> subprocess.CompletedProcess:
    """Snakemake in the repository, with the configuration given by ``args``."""
    return run_snakemake(REPO, *args, configfile=None, timeout=600)


@pytest.fixture
def sheet(tmp_path: Path) -> Path:
    """Two tiny 5-channel ImageXpress plates and a plate sheet naming them."""
    lines = ["plate\timages\tlayout\tplatemap\tbatch"]
    for plate in ("T1", "T2"):
        images = tmp_path / plate / "images"
        for well in ("A01", "A02", "B01"):
            for site in (1, 2):
                for ch in range(1, 6):
                    write_tif(images / f"{plate}_{well}_s{site}_w{ch}.tif", 100 + ch)
        pm = write_platemap(tmp_path / plate / "platemap.csv", ["A01", "A02", "B01"])
        lines.append(f"{plate}\t{images}\timagexpress\t{pm}\tB{plate[-1]}")
    path = tmp_path / "plates.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(sheet: Path) -> list[str]:
    return ["--config", f"plates={sheet}", f"results={sheet.parent / 'results'}"]


def manifests(sheet: Path) -> list[str]:
    """The discovery targets of the two plates (their images are too small to segment)."""
    return [str(sheet.parent / "results" / "manifest" / f"{p}.parquet") for p in ("T1", "T2")]


def test_dry_run_and_lint(sheet):
    dry = snakemake("-n", *overrides(sheet))
    assert dry.returncode == 0, dry.stderr + dry.stdout
    assert "discover" in dry.stdout + dry.stderr
    lint = snakemake("--lint", *overrides(sheet))
    assert lint.returncode == 0, lint.stderr + lint.stdout
    assert "Lints for" not in lint.stdout + lint.stderr


def test_run_writes_manifests_with_provenance(sheet):
    run = snakemake("-c1", *manifests(sheet), *overrides(sheet))
    assert run.returncode == 0, run.stderr[-3000:]
    results = sheet.parent / "results"
    m = read_manifest(results, "T2")
    assert len(m) == 6 and set(m["Metadata_Batch"]) == {"B2"}
    prov = read_provenance(results / "manifest" / "T2.parquet")
    assert prov["step"] == "discover" and "image_listing" in prov["inputs"]
    first = (results / "manifest" / "T1.parquet").read_bytes()
    # rerun from scratch: byte-identical
    (results / "manifest" / "T1.parquet").unlink()
    assert snakemake("-c1", *manifests(sheet), *overrides(sheet)).returncode == 0
    assert (results / "manifest" / "T1.parquet").read_bytes() == first
    assert (results / "logs" / "discover" / "T1.log").exists()
    assert (results / "benchmarks" / "discover" / "T1.tsv").exists()


def test_failed_job_leaves_no_output(sheet):
    (sheet.parent / "T1" / "images" / "T1_A02_s1_w3.tif").unlink()
    run = snakemake("-c1", "--keep-going", *manifests(sheet), *overrides(sheet))
    assert run.returncode != 0
    results = sheet.parent / "results"
    assert not (results / "manifest" / "T1.parquet").exists()
    assert not list((results / "manifest").glob(".T1*"))
    log = (results / "logs" / "discover" / "T1.log").read_text()
    assert "well A02 site 1 has no image of channel(s) RNA" in log
    # the other plate is not lost
    assert (results / "manifest" / "T2.parquet").exists()


def test_config_error_stops_before_any_job(sheet):
    run = snakemake("-n", *overrides(sheet), "image_mpp=big", "colour=red")
    assert run.returncode != 0
    out = run.stderr + run.stdout
    assert "the configuration cannot be used" in out
    assert "config key 'image_mpp': expected number, got str 'big'" in out
    assert "unknown config key(s) 'colour'" in out
    assert "Job stats" not in out


def test_nested_config_on_the_command_line(sheet):
    """--config 'section={key: value}' gives the schema's types, as a YAML file would."""
    run = snakemake(
        "-n",
        *overrides(sheet),
        "shards={wells_per_shard: 1}",
        "illumination={darkfield: false}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", run.stdout + run.stderr, re.M))
    assert counts["segment"] == "6", "3 wells per plate x 2 plates, 1 well per shard"
    bad = snakemake("-n", *overrides(sheet), "illumination={darkfield: maybe}")
    assert bad.returncode != 0
    assert "config key 'illumination.darkfield': expected boolean, got str 'maybe'" in (
        bad.stderr + bad.stdout
    )
    assert snakemake("-n", *overrides(sheet), "illumination={dark: 100}").returncode == 0
    bad = snakemake("-n", *overrides(sheet), "illumination={dark: no_such_dark.tif}")
    assert bad.returncode != 0
    assert "config key 'illumination.dark'" in bad.stderr + bad.stdout
    assert "no_such_dark.tif does not exist" in bad.stderr + bad.stdout


def test_dag_of_a_large_campaign_builds_fast(tmp_path):
    """100 plates of 384 wells: the DAG builds fast (folders are only listed, not parsed)."""
    import time

    lines = ["plate\timages\tlayout\tplatemap"]
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    pm = write_platemap(tmp_path / "pm384.csv", wells)
    for i in range(100):
        images = tmp_path / f"P{i:03d}"
        for ch in range(1, 6):  # the start-up probe only needs each channel once
            write_tif(images / f"P{i:03d}_A01_s1_w{ch}.tif")
        lines.append(f"P{i:03d}\t{images}\timagexpress\t{pm}")
    sheet = tmp_path / "plates.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    dry = snakemake("-n", "--quiet", "all", *overrides(sheet))
    elapsed = time.perf_counter() - t0
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert elapsed < 60, f"dry run of 100 plates took {elapsed:.1f} s"


def test_atomic_writes_have_the_usual_mode(tmp_path):
    import pandas as pd

    from hcsflow.io import write_table

    umask = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    finally:
        os.umask(umask)
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
