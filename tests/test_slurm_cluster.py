"""profiles/slurm on a real one-node SLURM cluster (tests/slurm_cluster.sh): a small simulated
plate goes from raw images to the report through sbatch, squeue status polling and srun, with
the profile's job-groups recipe on, and every table equals a local run's byte for byte.

Skipped, with the reason, where no cluster can be brought up (not root, no apt-get to install
SLURM); under ``CI=true`` that is a failure instead."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, moa_platemap
from hcsflow.simulate import simulate_plate

CLUSTER = REPO / "tests" / "slurm_cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
PARTITION = "hcsflow"
DAEMONS = ("munged", "slurmctld", "slurmd")
# Both runs together; a run that hangs (e.g. a status command that never sees its jobs) is
# killed with its whole process group, since snakemake's SLURM executor ignores SIGTERM.
RUN_TIMEOUT_S = 480


def unavailable(reason: str) -> None:
    """Skip, or fail under CI (``CI=true``), where the cluster cannot be brought up."""
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


def running(pid: int, name: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process of the program ``name``."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return comm == name and state != "Z"


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster with partition ``hcsflow``: its state folder and daemon PIDs."""
    if shutil.which("bash") is None or not Path("/proc").is_dir():
        unavailable("the test SLURM cluster needs bash and Linux")
    start = subprocess.run(
        ["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600
    )
    if start.returncode == 77:
        unavailable(f"no SLURM cluster can run here: {start.stderr.strip()}")
    assert start.returncode == 0, start.stderr[-3000:]
    state = Path(start.stdout.split()[-1])
    pids = {name: int((state / "pids" / name).read_text()) for name in DAEMONS}
    yield state, pids
    stop = subprocess.run(
        ["bash", str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=120
    )
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert not [name for name, pid in pids.items() if running(pid, name)], "daemons left running"
    assert not state.exists()
    assert not Path("/etc/slurm/slurm.conf").exists()


def profile_for_test_cluster() -> str:
    """The shipped SLURM profile as a user edits it for this cluster: the partition set, no
    account, the job-groups recipe uncommented."""
    lines, inside = [], False
    for line in PROFILE.read_text().splitlines():
        if line.startswith("## Job-groups recipe"):
            inside = True
        elif line.startswith("## end of job-groups recipe"):
            inside = False
        elif inside:
            assert line.startswith("# "), f"recipe line not commented as documented: {line!r}"
            line = line[2:]
        if "slurm_account:" in line:
            continue
        lines.append(line.replace('"CHANGE_ME"', f'"{PARTITION}"'))
    text = "\n".join(lines) + "\n"
    active = [line for line in lines if not line.lstrip().startswith("#")]
    assert not [line for line in active if "CHANGE_ME" in line], active
    assert "groups:" in active, active
    return text


def workflow_folder(root: Path, images: Path, platemap: Path) -> Path:
    """A copy of the workflow with a one-plate sheet and a small configuration."""
    for name in ("config", "rules", "envs", "workflow_scripts"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    (root / "plates.tsv").write_text(
        f"plate\timages\tlayout\tplatemap\tbatch\nS1\t{images}\timagexpress\t{platemap}\tB1\n"
    )
    (root / "over.yaml").write_text(
        "plates: plates.tsv\nresults: results\n"
        "channels:\n"
        "  - {name: DNA, id: w1, role: nuclear}\n"
        "  - {name: ER, id: w2, role: cytoplasm}\n"
        "shards: {wells_per_shard: 12}\n"
        "illumination: {method: mean_smooth, min_fields: 4}\n"
        "segmentation: {threads: 1, overlay_fields: 1, overlay_crop: 128}\n"
        "features: {threads: 1, families: [shape, intensity], zernike_degree: 2}\n"
        "analysis: {null_size: 200}\n"
    )
    return root


def cluster_env() -> dict[str, str]:
    """The environment without SLURM settings: commands find the test cluster's slurm.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def start_snakemake(root: Path, *args: str) -> subprocess.Popen:
    """snakemake in its own process group (so that a hung run can be killed whole)."""
    env = cluster_env()
    log = (root / "snakemake.out").open("w")
    return subprocess.Popen(
        [SNAKEMAKE, "--configfile", "over.yaml", *args],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def finish(runs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    """Wait for the runs until ``deadline``; SIGKILL the process group of any still running."""
    codes: dict[str, int | None] = {}
    for name, proc in runs.items():
        try:
            codes[name] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            codes[name] = None
    return codes


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def slurm_jobs() -> list[tuple[str, str, str]]:
    """(job id, comment, state) of every job the cluster still reports (MinJobAge=600)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=cluster_env(),
    ).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def parquet_files(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*.parquet"))}


def test_plate_runs_through_slurm_like_a_local_run(cluster, tmp_path):
    state, pids = cluster
    for name, pid in pids.items():
        assert running(pid, name), f"{name} (pid {pid}) is not running"

    plate = tmp_path / "S1"
    simulate_plate(
        plate, plate="S1", sites=1, size=160, platemap=moa_platemap(), seed=1, n_workers=1
    )
    for extra in (plate / "images").glob("*_w[345].tif"):
        extra.unlink()  # two channels: DNA (nuclear) and ER (cytoplasm)
    images, platemap = plate / "images", plate / "platemap.csv"
    local = workflow_folder(tmp_path / "local", images, platemap)
    cluster_run = workflow_folder(tmp_path / "slurm", images, platemap)
    (cluster_run / "profile").mkdir()
    (cluster_run / "profile" / "config.v8+.yaml").write_text(profile_for_test_cluster())

    # The local run shares the two cores with the cluster's jobs while snakemake waits
    # between status checks.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    runs = {
        "slurm": start_snakemake(
            cluster_run,
            "--profile",
            "profile",
            "--cores",
            "2",  # group jobs need cores; the recipe's 8 do not fit this node
            "--slurm-status-command",
            "squeue",  # no slurmdbd here: finished jobs stay in squeue for MinJobAge
            "--slurm-init-seconds-before-status-checks",
            "1",
        ),
        "local": start_snakemake(local, "--cores", "1"),
    }
    codes = finish(runs, deadline)
    for name, root in (("local", local), ("slurm", cluster_run)):
        log = tail(root / "snakemake.out")
        assert codes[name] is not None, f"{name} run killed after {RUN_TIMEOUT_S} s:\n{log}"
        assert codes[name] == 0, f"{name} run failed:\n{log}"

    # Every job ran under SLURM: one job per plate group, per shard rule and for the campaign
    # group, each submitted with sbatch and seen to complete by squeue.
    log = (cluster_run / "snakemake.out").read_text()
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    jobs = {job: (comment, status) for job, comment, status in slurm_jobs()}
    assert submitted and set(submitted) <= set(jobs), (submitted, jobs)
    assert {jobs[j][1] for j in submitted} == {"COMPLETED"}, jobs
    comments = sorted(jobs[j][0] for j in submitted)
    assert comments == [
        "rule_campaign_analysis_campaign_report",
        "rule_measure_wildcards_S1_000",
        "rule_plate_profiles_profiles",
        "rule_plate_setup_discover_illumination",
        "rule_segment_wildcards_S1_000",
        "rule_segmentation_overlays_wildcards_S1",
    ], comments
    assert "localrule" not in log.replace("localrule all:", "")

    report = cluster_run / "results" / "report" / "index.html"
    assert report.stat().st_size > 10_000
    ours = parquet_files(cluster_run / "results")
    theirs = parquet_files(local / "results")
    assert sorted(ours) == sorted(theirs)
    for part in ("manifest/", "segmentation/", "qc/", "cells/", "profiles/", "campaign/"):
        assert any(name.startswith(part) for name in ours), (part, sorted(ours))
    assert "analysis/activity.parquet" in ours
    assert [name for name in ours if ours[name] != theirs[name]] == []


def test_without_a_cluster_the_test_skips_but_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no apt-get"):
        unavailable("no apt-get")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no apt-get.*CI=true"):
        unavailable("no apt-get")


def test_start_without_root_says_why():
    command = ["bash", str(CLUSTER), "start"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is needed to drop root")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 77, run.stderr
    assert "needs root" in run.stderr
