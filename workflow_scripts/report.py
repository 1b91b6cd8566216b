"""Snakemake script: the offline HTML report of the results folder."""

from pathlib import Path

from hcsflow.logutil import log_to
from hcsflow.report import collect_inputs, write_report

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    # the results folder holds campaign/profiles.parquet
    inputs = collect_inputs(Path(sm.input.profiles).parents[1])
    write_report(sm.output.html, inputs, sm.params.report)
    log.info(
        "report written: %d plates with illumination figures, %d with overlays",
        len(inputs.illumination),
        len(inputs.overlays),
    )
