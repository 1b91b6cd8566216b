"""Snakemake script: write illumination-corrected float32 TIFFs of every field of a plate."""

from pathlib import Path

from hcsflow import illumination as il
from hcsflow.io import read_table
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    manifest = read_table(sm.input.manifest)
    profiles = dict(zip(sm.params.channels, sm.input.npz, strict=True))
    n = il.write_corrected(manifest, profiles, Path(sm.output.folder), root=sm.params.images)
    log.info("wrote %d corrected images to %s", n, sm.output.folder)
