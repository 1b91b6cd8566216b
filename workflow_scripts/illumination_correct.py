"""Snakemake script: write illumination-corrected float32 TIFFs of every field of a plate."""

import logging
from pathlib import Path

from hcsflow import illumination as il
from hcsflow.io import read_table

sm = snakemake  # noqa: F821 - provided by Snakemake
logging.basicConfig(
    filename=sm.log[0],
    filemode="w",
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("hcsflow.illumination")
try:
    manifest = read_table(sm.input.manifest)
    profiles = dict(zip(sm.params.channels, sm.input.npz, strict=True))
    n = il.write_corrected(manifest, profiles, Path(sm.output.folder))
    log.info("wrote %d corrected images to %s", n, sm.output.folder)
except Exception as exc:
    log.error("%s: %s", type(exc).__name__, exc)
    raise
