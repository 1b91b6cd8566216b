"""The ``hcsflow`` command: help that points to snakemake, --version, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import hcsflow
from conftest import REPO


def hcsflow_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hcsflow.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )


def test_version_prints_the_package_version_and_exits_0():
    run = hcsflow_command("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"hcsflow {hcsflow.__version__}"
    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert hcsflow.__version__ == declared.group(1)


def test_help_says_the_workflow_runs_with_snakemake():
    for args in (("--help",), ()):
        run = hcsflow_command(*args)
        assert run.returncode == 0, run.stderr
        assert "snakemake --profile profiles/local" in run.stdout
        assert "not with this command" in run.stdout
        assert "simulate" in run.stdout and "train-segmenter" in run.stdout


def test_unknown_command_is_an_error():
    run = hcsflow_command("run")
    assert run.returncode == 2
    assert "invalid choice: 'run'" in run.stderr
