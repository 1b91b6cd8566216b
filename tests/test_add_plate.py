"""Adding a plate to a finished campaign reruns only that plate's jobs and the campaign-level
steps: a campaign of two tiny simulated plates is run to the report, a third plate is added to
the plate sheet, and the dry run's job list is checked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, moa_platemap, run_snakemake
from hcsflow.simulate import simulate_plate

#: rules that combine every plate: rerun whenever the campaign gains a plate
CAMPAIGN_RULES = {"campaign", "analysis", "report", "all"}
#: every per-plate rule of the default image chain (no trained embedder)
PLATE_RULES = {
    "discover",
    "illumination",
    "segment",
    "segmentation_overlays",
    "measure",
    "profiles",
}


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str], str]]:
    """(rule, wildcards, reason) of every job in the output of ``snakemake -n``."""
    jobs: list[tuple[str, dict[str, str], str]] = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", "\n" + output):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head:
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        reason = re.search(r"^\s+reason: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((head.group(1), wildcards, reason.group(1) if reason else ""))
    return jobs


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    """Plates A1 and A2 run to the report; plate A3 simulated but not yet in the sheet."""
    root = tmp_path_factory.mktemp("addplate")
    pm = moa_platemap(1)
    for i, plate in enumerate(("A1", "A2", "A3"), start=1):
        simulate_plate(
            root / plate, plate=plate, sites=1, size=192, platemap=pm, seed=i, n_workers=1
        )
    for name in ("config", "rules", "envs", "workflow_scripts"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    write_sheet(root, ("A1", "A2"))
    (root / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\n"
        "channels:\n"
        "  - {name: DNA, id: w1, role: nuclear}\n"
        "  - {name: ER, id: w2, role: cytoplasm}\n"
        "  - {name: AGP, id: w4, role: membrane}\n"
        "shards: {wells_per_shard: 4}\n"
        "illumination: {method: mean_smooth, min_fields: 4}\n"
        "segmentation: {threads: 1, overlay_fields: 1, overlay_crop: 96}\n"
        "features: {threads: 1, families: [shape, intensity]}\n"
        "analysis: {null_size: 100}\n"
    )
    run = run_snakemake(root, "-c2")
    assert run.returncode == 0, run.stderr[-4000:]
    return root


def write_sheet(root: Path, plates: tuple[str, ...]) -> None:
    lines = ["plate\timages\tlayout\tplatemap\tbatch"]
    lines += [f"{p}\t{root}/{p}/images\timagexpress\t{root}/{p}/platemap.csv\tB1" for p in plates]
    (root / "plates.tsv").write_text("\n".join(lines) + "\n")


def test_finished_campaign_has_nothing_to_do(campaign):
    dry = run_snakemake(campaign, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry_run_jobs(dry.stdout + dry.stderr) == [], (dry.stdout + dry.stderr)[-3000:]


def test_added_plate_reruns_only_its_jobs_and_the_campaign(campaign):
    write_sheet(campaign, ("A1", "A2", "A3"))
    dry = run_snakemake(campaign, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = dry_run_jobs(dry.stdout + dry.stderr)
    others = [
        (rule, wc, reason)
        for rule, wc, reason in jobs
        if wc.get("plate", "A3") != "A3" or ("plate" not in wc and rule not in CAMPAIGN_RULES)
    ]
    assert not others, "jobs of the finished plates scheduled:\n" + "\n".join(map(str, others))
    scheduled = {rule for rule, _, _ in jobs}
    assert CAMPAIGN_RULES <= scheduled
    assert PLATE_RULES <= scheduled
    # the new plate's jobs: one discovery, one per channel, one per shard, one profile
    per_rule = pd.Series([rule for rule, _, _ in jobs]).value_counts()
    assert per_rule["segment"] == per_rule["measure"] == 2  # 8 wells, 4 per shard
    assert per_rule["illumination"] == 3  # one per channel
    assert per_rule["discover"] == per_rule["profiles"] == 1
