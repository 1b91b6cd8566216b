"""Shared fixtures: tiny plate folders in each vendor layout, written as real TIFF files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: the real Broad-layout field of shared/data (beside the checkout in CI)
EXAMPLE_HUMAN = SHARED_DATA / "example_human"
needs_example_human = pytest.mark.skipif(
    not EXAMPLE_HUMAN.is_dir(), reason=f"{EXAMPLE_HUMAN} not present"
)

# Limit threads in every test: CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def segmentation_snakefile(targets: str = "segmentation_targets()") -> str:
    """A Snakefile of the workflow up to segmentation (discover, illumination, segment) whose
    rule ``all`` asks for ``targets`` (a Python expression evaluated in the Snakefile)."""
    return f"""
configfile: "config/config.yaml"


include: "{REPO}/rules/common.smk"
include: "{REPO}/rules/discover.smk"
include: "{REPO}/rules/illumination.smk"
include: "{REPO}/rules/segment.smk"


rule all:
    input:
        {targets},
"""


def moa_platemap(replicates: int = 2):
    """A small simulated plate map: 4 DMSO wells and the top dose of two compounds of each of
    two MoAs (tubulin, proteasome), the treatments ``replicates`` times, on consecutive wells
    of rows A, B, ... (6 per row for two replicates, else 8 per row)."""
    import pandas as pd

    from hcsflow.simulate import default_platemap

    pm = default_platemap(96)
    neg = pm[pm["role"] == "negcon"].head(4)
    trt = pm[pm["moa"].isin(["tubulin polymerization inhibitor", "proteasome inhibitor"])]
    trt = trt[trt["dose_um"] == trt["dose_um"].max()].head(4)
    out = pd.concat([neg] + [trt] * replicates).reset_index(drop=True)
    per_row = 6 if replicates == 2 else 8
    out["well"] = [f"{'ABCDEFGH'[i // per_row]}{i % per_row + 1:02d}" for i in range(len(out))]
    return out


def write_tif(path: Path, value: int = 100, shape=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, dtype=np.uint16))


def write_platemap(path: Path, wells, extra_columns: dict | None = None) -> Path:
    rows = [
        "well,compound,dose_um,role,moa,target" + "".join(f",{c}" for c in (extra_columns or {}))
    ]
    for i, w in enumerate(wells):
        role = "negcon" if i % 4 == 0 else "trt"
        compound = "DMSO" if role == "negcon" else f"cmpd{i % 3}"
        dose = "0" if role == "negcon" else "1.5"
        extra = "".join(
            f",{v[i] if isinstance(v, list) else v}" for v in (extra_columns or {}).values()
        )
        rows.append(f"{w},{compound},{dose},{role},moa{i % 2},T{i}{extra}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def imagexpress_plate(tmp_path: Path):
    """A 2-well x 2-site x 3-channel ImageXpress plate folder and its plate map."""
    images = tmp_path / "P1" / "images"
    for well in ("A01", "B02"):
        for site in (1, 2):
            for ch in (1, 2, 3):
                write_tif(images / f"P1_{well}_s{site}_w{ch}.tif", value=10 * ch)
    pm = write_platemap(tmp_path / "P1" / "platemap.csv", ["A01", "B02", "C03"])
    return tmp_path / "P1", images, pm


CHANNELS3 = [
    {"name": "DNA", "id": "w1", "role": "nuclear"},
    {"name": "ER", "id": "w2", "role": "cytoplasm"},
    {"name": "Mito", "id": "w3", "role": "other"},
]


SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_snakemake(
    root: Path, *args: str, configfile: str | None = "over.yaml", timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run this environment's snakemake in ``root`` with this checkout on the Python path.

    Parameters
    ----------
    root : Path
        Working directory: a test's workflow folder, or the repository itself.
    *args : str
        Command-line arguments after the config file.
    configfile : str or None
        Config file (relative to ``root``) given first with ``--configfile``; None gives none.
    timeout : int
        Seconds before the run is killed.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    config = ["--configfile", configfile] if configfile is not None else []
    return subprocess.run(
        [SNAKEMAKE, *config, *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
