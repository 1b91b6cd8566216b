"""Snakemake script: train the segmentation network (``hcsflow train-segmenter``, run in this
job's Python, so that the workflow's environment is the one that trains)."""

import os

# torch's OpenMP threads must not spin while the job's other threads (or jobs) need the core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import contextlib

from hcsflow.cli import main
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
argv = ["train-segmenter", "--out", sm.output.model, "--threads", str(sm.threads)]
argv += list(sm.params.options)
with log_to(sm.log[0]) as log, open(sm.log[0], "a") as out, contextlib.redirect_stdout(out):
    log.info("hcsflow %s", " ".join(argv))
    code = main(argv)
if code:
    raise SystemExit(f"hcsflow train-segmenter failed (exit code {code}); see {sm.log[0]}")
