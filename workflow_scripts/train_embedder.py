"""Snakemake script: train the campaign's embedder on the plates' crop samples
(``hcsflow train-embedder``, run in this job's Python)."""

import os

# torch's OpenMP threads must not spin while the job's other threads (or jobs) need the core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import contextlib

from hcsflow.cli import main
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
emb = sm.params.embedding
train = emb["train"]
argv = ["train-embedder", "--samples", *map(str, sm.input.samples), "--out", sm.output.model]
argv += ["--method", emb["method"], "--steps", str(train["steps"])]
argv += ["--batch-size", str(train["batch_size"]), "--lr", str(train["lr"])]
argv += ["--seed", str(train["seed"]), "--threads", str(sm.threads), "--device", emb["device"]]
with log_to(sm.log[0]) as log, open(sm.log[0], "a") as out, contextlib.redirect_stdout(out):
    log.info("hcsflow %s", " ".join(argv))
    code = main(argv)
if code:
    raise SystemExit(f"hcsflow train-embedder failed (exit code {code}); see {sm.log[0]}")
