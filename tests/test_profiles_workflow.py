"""The profiles and campaign rules run by Snakemake: per-plate profiles from per-shard cell
tables, the campaign tables with provenance, and the campaign from a user's profile table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, SHARED_DATA, run_snakemake, write_platemap, write_tif
from hcsflow.io import read_provenance, read_table

LINCS = SHARED_DATA / "lincs_profiles" / "SQ00015054_normalized_feature_select.csv.gz"
WELLS = ["A01", "A02", "A03", "B01", "B02", "B03"]


def _workflow(tmp_path: Path) -> Path:
    """A Snakefile that includes the repository's common and profiles rules."""
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "Snakefile").write_text(
        f'configfile: "{REPO}/config/config.yaml"\n'
        f'include: "{REPO}/rules/common.smk"\n'
        f'include: "{REPO}/rules/profiles.smk"\n'
        "rule all:\n    input:\n"
        '        f"{RESULTS}/campaign/profiles.parquet",\n'
        '        f"{RESULTS}/campaign/consensus.parquet",\n'
    )
    return wf


def _cells(plate: str, wells: list[str], rng: np.random.Generator) -> pd.DataFrame:
    rows, x = [], []
    for i, w in enumerate(wells):
        role = "negcon" if WELLS.index(w) % 4 == 0 else "trt"
        for c in range(20 + i):
            rows.append((plate, w, 1 + c % 2, c + 1, role))
            x.append(rng.normal(size=6) + (2.0 if role == "trt" else 0.0))
    meta = pd.DataFrame(
        rows,
        columns=[
            "Metadata_Plate",
            "Metadata_Well",
            "Metadata_Site",
            "Metadata_ObjectNumber",
            "Metadata_Role",
        ],
    )
    feats = pd.DataFrame(np.array(x), columns=[f"Cells_F{i}" for i in range(6)])
    feats["Nuclei_Location_Center_X"] = rng.uniform(0, 100, len(feats))
    idx = meta.Metadata_Well.map(WELLS.index)
    meta["Metadata_Compound"] = np.where(idx % 4 == 0, "DMSO", "cmpd" + (idx % 3).astype(str))
    meta["Metadata_Dose"] = np.where(idx % 4 == 0, 0.0, 1.5)
    meta["Metadata_Batch"] = "B" + plate[-1]
    meta["Metadata_QC_Flag"] = False
    meta.loc[0, "Metadata_QC_Flag"] = True
    return pd.concat([meta, feats], axis=1)


def _configfile(tmp_path: Path, **keys) -> list[str]:
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump(keys))
    return ["--configfile", str(path)]


def _run(wf: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on the workflow copy ``wf`` with one core."""
    return run_snakemake(
        wf, "-c1", "-s", str(wf / "Snakefile"), *args, configfile=None, timeout=600
    )


@pytest.fixture
def campaign(tmp_path: Path):
    lines = ["plate\timages\tlayout\tplatemap\tbatch"]
    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    for plate in ("T1", "T2"):
        images = tmp_path / plate / "images"
        for ch in range(1, 6):
            write_tif(images / f"{plate}_A01_s1_w{ch}.tif")
        pm = write_platemap(tmp_path / plate / "platemap.csv", WELLS)
        lines.append(f"{plate}\t{images}\timagexpress\t{pm}\tB{plate[-1]}")
        # shards of 4 wells: 000 = A01..A03 + B01 in plate order, 001 = B02, B03
        for shard, wells in (("000", WELLS[:4]), ("001", WELLS[4:])):
            out = results / "cells" / plate / f"{shard}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            _cells(plate, wells, rng).to_parquet(out)
    sheet = tmp_path / "plates.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet, results


def test_profiles_and_campaign_rules(tmp_path, campaign):
    sheet, results = campaign
    wf = _workflow(tmp_path)
    cfg = _configfile(
        tmp_path,
        plates=str(sheet),
        results=str(results),
        shards={"wells_per_shard": 4},
        # unnormalized, so that the cell counts can be read back
        profiles={"qc_columns": ["Metadata_QC_Flag"], "normalization": "none"},
    )
    lint = _run(wf, "--lint", *cfg)  # the test Snakefile itself has absolute paths
    assert f"Lints for snakefile {REPO}/rules/profiles.smk" not in lint.stdout + lint.stderr
    run = _run(wf, *cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    prof = read_table(results / "profiles" / "T1.parquet")
    assert prof.Metadata_Well.tolist() == WELLS
    # first cell of each shard is QC-flagged and left out
    assert prof.Image_Count_Cells.tolist() == [19, 21, 22, 23, 19, 21]
    assert read_provenance(results / "profiles" / "T1.parquet")["step"] == "profiles"
    camp = read_table(results / "campaign" / "profiles.parquet")
    assert len(camp) == 12
    assert "Nuclei_Location_Center_X" not in camp.columns  # blocklisted
    prov = read_provenance(results / "campaign" / "profiles.parquet")
    assert prov["steps"][0].startswith("aggregate(median")
    assert any(s.startswith("feature_select(") for s in prov["steps"])
    assert prov["excluded_features"]["blocklist"] == ["Nuclei_Location_Center_X"]
    cons = read_table(results / "campaign" / "consensus.parquet")
    assert cons.Metadata_Compound.tolist() == ["DMSO", "cmpd0", "cmpd1", "cmpd2"]
    assert cons.Metadata_Replicates.tolist() == [4, 2, 2, 4]
    assert set(cons.Metadata_Role) == {"negcon", "trt"}
    assert (results / "logs" / "campaign" / "campaign.log").exists()
    assert (results / "benchmarks" / "profiles" / "T2.tsv").exists()
    # the same run again gives byte-identical tables
    first = (results / "campaign" / "profiles.parquet").read_bytes()
    (results / "campaign" / "profiles.parquet").unlink()
    assert _run(wf, *cfg).returncode == 0
    assert (results / "campaign" / "profiles.parquet").read_bytes() == first


@pytest.mark.skipif(not LINCS.exists(), reason="shared LINCS plate not available")
def test_campaign_from_input_profiles(tmp_path, campaign):
    sheet, _ = campaign
    results = tmp_path / "results_lincs"
    wf = _workflow(tmp_path)
    cfg = _configfile(
        tmp_path,
        plates=str(sheet),
        results=str(results),
        input_profiles=str(LINCS),
        campaign={"sphering": {"enabled": True, "epsilon": 0.01}},
    )
    run = _run(wf, *cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (results / "profiles").exists()  # no image stage ran
    camp = read_table(results / "campaign" / "profiles.parquet")
    assert len(camp) == 384
    prov = read_provenance(results / "campaign" / "profiles.parquet")
    assert prov["steps"][0].startswith("input_profiles(")
    assert any(s.startswith("sphere(ZCA") for s in prov["steps"])
    cons = read_table(results / "campaign" / "consensus.parquet")
    assert "Metadata_MoA" in cons.columns
    assert cons.Metadata_Replicates.max() == 24  # DMSO


def test_profiles_with_cell_projection_and_dispersion(tmp_path, campaign):
    """profiles.projection: rules negcon_cells (per plate) and cell_projection (per campaign)
    run before profiles, whose features are then the components; profiles.dispersion adds
    per-well spread features."""
    sheet, results = campaign
    wf = _workflow(tmp_path)
    cfg = _configfile(
        tmp_path,
        plates=str(sheet),
        results=str(results),
        shards={"wells_per_shard": 4},
        profiles={
            "projection": {"method": "pca", "n_components": 3, "cells_per_plate": 100},
            "dispersion": ["mad", "q90"],
        },
    )
    run = _run(wf, *cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (results / "projection" / "negcon" / "T1.npz").exists()
    assert (results / "projection" / "projection.npz").exists()
    prof = read_table(results / "profiles" / "T2.parquet")
    comps = [f"Cells_Projection_PCA_00{i}" for i in (1, 2, 3)]
    assert set(comps) <= set(prof.columns)
    assert {f"{c}__mad" for c in comps} | {f"{c}__q90" for c in comps} <= set(prof.columns)
    assert not any(c.startswith("Cells_F") for c in prof.columns)  # projected away
    prov = read_provenance(results / "profiles" / "T2.parquet")
    assert prov["steps"][0].startswith("project cells (pca, 3 components")
    assert any(p.endswith("projection.npz") for p in prov["inputs"])
    # the negcon wells of each plate sit near 0 in every component after normalization
    ctrl = prof[prof.Metadata_Role == "negcon"]
    assert ctrl[comps].abs().to_numpy().max() < 2.0
    # rerun: byte-identical profiles
    t2 = results / "profiles" / "T2.parquet"
    first = t2.read_bytes()
    t2.unlink()
    assert _run(wf, str(t2), *cfg).returncode == 0
    assert t2.read_bytes() == first
