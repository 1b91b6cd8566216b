"""profiles/slurm as snakemake-executor-plugin-slurm reads it: the profile parsed by Snakemake,
the GPU rules' resources from a dry run, and the plugin's own checks and sbatch arguments."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, SNAKEMAKE, write_platemap, write_tif

slurm = pytest.importorskip("snakemake_executor_plugin_slurm")
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra  # noqa: E402
from snakemake_interface_common.exceptions import WorkflowError  # noqa: E402

PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
GPU_RULES = ("segment", "measure", "train_embedder")


class JobResources(dict):
    """A job's evaluated resources with the attribute access the plugin uses."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def with_gpu_recipe(text: str, gpu_model: str | None = None) -> str:
    """The profile as a user edits it: the GPU recipe uncommented, the placeholders filled."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## GPU recipe"):
            inside = True
        elif line.startswith("## end of GPU recipe"):
            inside = False
        elif inside:
            assert line.startswith("# "), f"recipe line not commented as documented: {line!r}"
            line = line[2:]
            if gpu_model is not None and line.strip().startswith("# gpu_model:"):
                line = line.replace("# gpu_model:", "gpu_model:", 1)
        lines.append(line)
    out = "\n".join(lines) + "\n"
    out = out.replace("CHANGE_ME_GPU", "gpu").replace("CHANGE_ME", "cpu")
    if gpu_model is not None:
        out = out.replace('gpu_model: "a100"', f'gpu_model: "{gpu_model}"')
    return out


def dry_run_jobs(tmp_path: Path, profile_text: str) -> dict[str, SimpleNamespace]:
    """One job per rule of a one-plate dry run through the profile, with GPU devices on."""
    images = tmp_path / "G1" / "images"
    for well in ("A01", "A02"):
        for ch in range(1, 6):
            write_tif(images / f"G1_{well}_s1_w{ch}.tif", 100 + ch)
    pm = write_platemap(tmp_path / "G1" / "platemap.csv", ["A01", "A02"])
    sheet = tmp_path / "plates.tsv"
    sheet.write_text(f"plate\timages\tlayout\tplatemap\nG1\t{images}\timagexpress\t{pm}\n")
    over = tmp_path / "over.yaml"
    over.write_text(
        f"plates: {sheet}\nresults: {tmp_path / 'results'}\n"
        "segmentation: {method: deep, device: cuda}\n"
        "embedding: {method: weakly_supervised, device: cuda}\n"
    )
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.v8+.yaml").write_text(profile_text)
    run = subprocess.run(
        [SNAKEMAKE, "-n", "--profile", str(profile), "--configfile", str(over)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    jobs: dict[str, SimpleNamespace] = {}
    for block in re.split(r"\n(?=rule \w+:)", run.stdout + run.stderr):
        head = re.match(r"rule (\w+):", block)
        found = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head is None or found is None:
            continue
        resources = JobResources()
        for item in found.group(1).split(", "):
            key, value = item.split("=", 1)
            if value != "<TBD>":
                resources[key] = int(value) if value.isdigit() else value
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        jobs[head.group(1)] = SimpleNamespace(
            name=head.group(1),
            threads=int(threads.group(1)) if threads else 1,
            resources=resources,
        )
    return jobs


def sbatch_arguments(job: SimpleNamespace) -> list[str]:
    """The sbatch call the plugin builds for a job (account and partition as it formats them)."""
    validate_slurm_extra(job)
    params = {
        "run_uuid": "test",
        "slurm_logfile": "/tmp/slurm.log",
        "comment_str": f"rule_{job.name}",
        "account": f"-A {shlex.quote(str(job.resources['slurm_account']))}",
        "partition": f"-p {shlex.quote(str(job.resources['slurm_partition']))}",
        "workdir": str(REPO),
    }
    return shlex.split(get_submit_command(job, params) + set_gres_string(job))


def test_shipped_profile_passes_no_gpu_options_through_slurm_extra(tmp_path):
    from snakemake.profiles import ProfileConfigFileParser

    for text in (PROFILE.read_text(), with_gpu_recipe(PROFILE.read_text(), "a100")):
        path = tmp_path / "config.v8+.yaml"
        path.write_text(text)
        with path.open() as stream:
            args = ProfileConfigFileParser().parse(stream)
        assert args["executor"] == "slurm"
        assignments = args.get("default-resources", []) + args.get("set-resources", [])
        assert not [a for a in assignments if "slurm_extra" in a and "--g" in a], assignments
    # The uncommented recipe sets the GPU rules' partition and nothing the plugin forbids.
    assert "segment:slurm_partition=gpu" in args["set-resources"]
    assert "segment:gpu_model=a100" in args["set-resources"]


def test_gpu_rules_submit_with_the_plugins_gpu_resource(tmp_path):
    jobs = dry_run_jobs(tmp_path, with_gpu_recipe(PROFILE.read_text()))
    for rule in GPU_RULES:
        job = jobs[rule]
        assert job.resources["gpu"] == 1, (rule, job.resources)
        argv = sbatch_arguments(job)
        assert "--gpus=1" in argv, (rule, argv)
        assert not [a for a in argv if a.startswith("--gres")], (rule, argv)
        assert argv[argv.index("-p") + 1] == "gpu"
        assert f"--cpus-per-task={job.threads}" in argv
        assert f"--mem {job.resources['mem_mb']}" in " ".join(argv)
    # CPU-only rules stay on the CPU partition without a GPU.
    argv = sbatch_arguments(jobs["discover"])
    assert argv[argv.index("-p") + 1] == "cpu"
    assert not [a for a in argv if a.startswith(("--gpus", "--gres"))]


def test_gpu_model_pins_the_gpu_type(tmp_path):
    jobs = dry_run_jobs(tmp_path, with_gpu_recipe(PROFILE.read_text(), gpu_model="h100"))
    assert "--gpus=h100:1" in sbatch_arguments(jobs["segment"])
    assert "--gpus=1" in sbatch_arguments(jobs["measure"])


def test_plugin_rejects_gres_in_slurm_extra():
    """The recipe the profile used to show fails the plugin's own check."""
    job = SimpleNamespace(
        name="segment",
        threads=2,
        resources=JobResources(slurm_extra="--gres=gpu:1", slurm_partition="gpu"),
    )
    with pytest.raises(WorkflowError, match="generic-resources"):
        validate_slurm_extra(job)
