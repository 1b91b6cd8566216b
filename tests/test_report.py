"""The analysis stage on files, the offline report (also in headless Chromium), the notebook
and the analysis/report rules run by Snakemake."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import consensus_of, make_screen

from conftest import REPO, run_snakemake
from hcsflow import analysis as A
from hcsflow import report as R
from hcsflow.io import read_provenance, read_table, write_table

OUTPUTS = ("activity", "consistency", "clusters", "dose_response")
CONFIG = {"null_size": 1000, "umap": {"n_neighbors": 5}}


def _png(color: int) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().imshow(np.full((4, 4), color))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder with campaign profiles, analysis tables and image-stage PNGs."""
    res = tmp_path_factory.mktemp("results")
    df = make_screen(replicates=4)
    df["Metadata_Count_Cells"] = np.arange(len(df)) % 50 + 100
    df["Metadata_QC_Flagged"] = np.arange(len(df)) % 13 == 0
    write_table(df, res / "campaign" / "profiles.parquet")
    write_table(consensus_of(df), res / "campaign" / "consensus.parquet")
    A.analyze_files(
        str(res / "campaign" / "profiles.parquet"),
        str(res / "campaign" / "consensus.parquet"),
        {k: str(res / "analysis" / f"{k}.parquet") for k in OUTPUTS},
        CONFIG,
    )
    for ch in ("DNA", "Mito"):
        (res / "illumination" / "P0").mkdir(parents=True, exist_ok=True)
        (res / "illumination" / "P0" / f"{ch}.png").write_bytes(_png(1))
    (res / "qc").mkdir(exist_ok=True)
    (res / "qc" / "P0_overlays.png").write_bytes(_png(2))
    R.write_report(res / "report" / "index.html", R.collect_inputs(res))
    return res


def test_analysis_files_deterministic(results, tmp_path):
    outs = {k: str(tmp_path / f"{k}.parquet") for k in OUTPUTS}
    A.analyze_files(
        str(results / "campaign" / "profiles.parquet"),
        str(results / "campaign" / "consensus.parquet"),
        outs,
        CONFIG,
    )
    for k in OUTPUTS:
        assert Path(outs[k]).read_bytes() == (results / "analysis" / f"{k}.parquet").read_bytes()
    prov = read_provenance(outs["activity"])
    assert prov["summary"]["nsc_accuracy"] == 1.0 and "profiles" in prov["inputs"]
    cl = read_table(outs["clusters"])
    assert {"UMAP_1", "UMAP_2", "Metadata_Cluster", "Metadata_Neighbor_1"} <= set(cl.columns)


def figure_ids(text: str) -> list[str]:
    return re.findall(r'<img id="([^"]+)"', text)


EXPECTED = {
    "plate-P0-cellcount",
    "plate-P0-qc",
    "plate-P0-activity",
    "plate-P1-activity",
    "illum-P0-DNA",
    "illum-P0-Mito",
    "overlay-P0",
    "umap-cluster",
    "umap-moa",
    "umap-activity",
    "map-activity",
    "map-consistency",
    "dose-response",
    "heatmap-consensus",
}


def test_report_has_figures_and_is_offline(results):
    text = (results / "report" / "index.html").read_text()
    ids = figure_ids(text)
    assert EXPECTED <= set(ids), EXPECTED - set(ids)
    assert len(ids) == len(set(ids))
    assert not re.search(r"https?:", text, flags=re.IGNORECASE)
    assert "<script" not in text.lower()
    # every figure is an embedded PNG that decodes
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="table-activity"' in text and 'id="table-clusters"' in text
    # same inputs -> same report
    again = R.render_report(R.collect_inputs(results))
    assert again == text


def test_report_degrades_without_inputs(tmp_path):
    text = R.render_report(R.ReportInputs())
    assert figure_ids(text) == []
    for what in ("No well-level profiles", "No illumination", "No segmentation", "No UMAP"):
        assert what in text
    # profiles-only (e.g. input_profiles without images): plate maps but no image figures
    df = make_screen()
    inp = R.ReportInputs(profiles=df, consensus=consensus_of(df))
    ids = set(figure_ids(R.render_report(inp)))
    assert ids == {"heatmap-consensus"}  # no counts/QC columns, no analysis yet
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'titel' under 'report'"):
        R.render_report(inp, {"titel": "x"})


def test_parse_well_and_plate_shape():
    assert R.parse_well("A01") == (0, 0) and R.parse_well("P24") == (15, 23)
    assert R.parse_well("AF48") == (31, 47)
    assert R.plate_shape(["A01", "H12"]) == (8, 12)
    assert R.plate_shape(["A01", "I01"]) == (16, 24)
    with pytest.raises(ValueError, match="well"):
        R.parse_well("1A")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_report_in_headless_chromium(results, tmp_path):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        (results / "report" / "index.html").as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    # the browser parsed the document and built every figure element
    ids = set(figure_ids(dom))
    assert EXPECTED <= ids, EXPECTED - ids
    assert "<h1>hcsflow screen report</h1>" in dom


def test_notebook_runs(results):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(REPO / "notebooks" / "explore_results.ipynb", as_version=4)
    env_before = dict(os.environ)
    os.environ["HCSFLOW_RESULTS"] = str(results)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    clusters = read_table(results / "analysis" / "clusters.parquet")
    largest = clusters.loc[clusters.Metadata_Cluster >= 0, "Metadata_Cluster"].value_counts()
    members = clusters[clusters.Metadata_Cluster == largest.idxmax()]
    assert f"cluster {largest.idxmax()}: {members.Metadata_Compound.nunique()} compounds" in text
    assert members.Metadata_Compound.iloc[0] in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


SNAKEFILE = """
RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
DISK_MB = 1000


def report_figures():
    return []


include: "%s"


rule all:
    input:
        [f"{RESULTS}/analysis/{k}.parquet" for k in ("activity", "consistency", "clusters")],
        f"{RESULTS}/report/index.html",
"""


def test_rules_run(results, tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    res = tmp_path / "res"
    (res / "campaign").mkdir(parents=True)
    for name in ("profiles", "consensus"):
        shutil.copy(results / "campaign" / f"{name}.parquet", res / "campaign")
    cfg["analysis"].update(CONFIG)
    conf = {"results": str(res), "analysis": cfg["analysis"], "report": cfg["report"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE % (REPO / "rules" / "analysis.smk"))
    base = ["-s", str(snakefile), "-d", str(tmp_path)]
    lint = run_snakemake(tmp_path, *base, "--lint", configfile="config.yaml", timeout=300)
    lints = lint.stdout + lint.stderr
    assert "analysis.smk:" not in lints and "Lints for rule" not in lints, lints
    run = run_snakemake(tmp_path, *base, "-c1", configfile="config.yaml", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for k in OUTPUTS:
        a = read_table(res / "analysis" / f"{k}.parquet")
        b = read_table(results / "analysis" / f"{k}.parquet")
        pd.testing.assert_frame_equal(a, b)
    html = (res / "report" / "index.html").read_text()
    assert {"umap-cluster", "map-activity", "plate-P0-activity"} <= set(figure_ids(html))
    assert (res / "logs" / "analysis" / "analysis.log").exists()
    assert (res / "benchmarks" / "report" / "report.tsv").exists()


def test_report_qc_records_from_qc_tables(tmp_path):
    df = make_screen()
    write_table(df, tmp_path / "campaign" / "profiles.parquet")
    qc = pd.DataFrame(
        {"Metadata_Plate": ["P1", "P1"], "Metadata_Well": ["A01", "P24"], "issue": ["a", "b"]}
    )
    write_table(qc, tmp_path / "qc" / "P1_discovery.parquet")
    inp = R.collect_inputs(tmp_path)
    assert set(inp.qc) == {"P1"} and len(inp.qc["P1"]) == 2
    ids = set(figure_ids(R.render_report(inp)))
    assert "plate-P1-qc" in ids and "plate-P0-qc" not in ids
