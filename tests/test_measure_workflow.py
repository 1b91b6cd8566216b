"""The whole chain run by Snakemake on raw simulated plates: discovery, illumination,
segmentation, per-cell measurements and embeddings (a trained embedder), profiles, campaign,
analysis and the report; reruns give byte-identical per-cell tables."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, moa_platemap, run_snakemake
from hcsflow.io import read_provenance, read_table
from hcsflow.simulate import simulate_plate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("measurewf")
    pm = moa_platemap()
    lines = ["plate\timages\tlayout\tplatemap\tbatch"]
    for i, plate in enumerate(("M1", "M2"), start=1):
        simulate_plate(
            root / plate, plate=plate, sites=1, size=224, platemap=pm, seed=i, n_workers=1
        )
        lines.append(
            f"{plate}\t{root}/{plate}/images\timagexpress\t{root}/{plate}/platemap.csv\tB1"
        )
    shutil.copytree(REPO / "config", root / "config")
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "envs", root / "envs")
    shutil.copytree(REPO / "workflow_scripts", root / "workflow_scripts")
    (root / "plates.tsv").write_text("\n".join(lines) + "\n")
    (root / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\n"
        "shards: {wells_per_shard: 6}\n"
        "illumination: {method: mean_smooth, min_fields: 4}\n"
        "segmentation: {threads: 1, overlay_fields: 1, overlay_crop: 128}\n"
        "features: {threads: 1}\n"
        "embedding:\n  method: weakly_supervised\n  crop_um: 24.0\n"
        "  train: {cells_per_field: 2, steps: 4, batch_size: 8, threads: 1}\n"
        "analysis: {null_size: 200}\n"
    )
    return root


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_snakemake(root, *args, timeout=900)


@pytest.fixture(scope="module")
def finished(workdir) -> Path:
    run = snakemake(workdir, "-c2")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir / "results"


def test_chain_reaches_the_report(finished):
    assert (finished / "report" / "index.html").stat().st_size > 10_000
    for name in ("activity", "consistency", "clusters", "dose_response"):
        assert (finished / "analysis" / f"{name}.parquet").exists()
    assert (finished / "models" / "embedder.pt").exists()
    assert (finished / "models" / "embedder.md").exists()
    # the crop samples are temporary
    assert not list((finished / "embedding").glob("samples/*.npz"))


def test_cell_tables(finished, workdir):
    cells = read_table(finished / "cells" / "M1" / "000.parquet")
    for col in (
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Site",
        "Metadata_ObjectNumber",
        "Metadata_Cells_Location_Center_X",
        "Metadata_Compound",
        "Metadata_Role",
        "Metadata_Cells_CropPadded",
        "Cells_AreaShape_Area",
        "Nuclei_Intensity_MeanIntensity_DNA",
        "Cytoplasm_Texture_Contrast_Mito_3_00_256",
        "Cells_Embedding_0000",
    ):
        assert col in cells.columns, col
    assert len(cells) > 20
    assert cells["Cells_Embedding_0000"].dtype == np.float32
    assert cells["Cells_AreaShape_Area"].dtype == np.float32
    assert set(cells["Metadata_Well"]) == {f"A{c:02d}" for c in range(1, 7)}
    # rows follow the masks: one row per cell of each field
    from hcsflow.io import read_masks

    _, masks = read_masks(finished, "M1", "A02", 1)
    rows = cells[cells["Metadata_Well"] == "A02"]
    assert rows["Metadata_ObjectNumber"].tolist() == sorted(set(np.unique(masks)) - {0})
    prov = read_provenance(finished / "cells" / "M1" / "000.parquet")
    assert prov["step"] == "measure" and "masks" in prov["inputs"]
    qc = read_table(finished / "qc" / "M1" / "000.parquet")
    assert len(qc) == 6 and "ImageQuality_FocusScore_DNA" in qc.columns
    assert qc["Count_Cells"].sum() == (cells["Metadata_Well"].isin(qc["Metadata_Well"])).sum()
    prof = read_table(finished / "profiles" / "M1.parquet")
    assert len(prof) == 12 and "Cells_Embedding_0000" in prof.columns


def test_rerun_of_a_shard_is_byte_identical(finished, workdir):
    path = finished / "cells" / "M2" / "001.parquet"
    before = path.read_bytes()
    path.unlink()
    run = snakemake(workdir, "-c2", str(path.relative_to(workdir)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert path.read_bytes() == before
