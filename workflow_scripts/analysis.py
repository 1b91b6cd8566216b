"""Snakemake script: activity, consistency, UMAP and clusters of the campaign's profiles."""

from hcsflow.analysis import AnalysisParams, analyze_files
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    out = sm.output
    result = analyze_files(
        sm.input.profiles,
        sm.input.consensus,
        {
            "activity": out.activity,
            "consistency": out.consistency,
            "clusters": out.clusters,
            "dose_response": out.dose_response,
        },
        AnalysisParams.from_config(sm.params.analysis),
    )
    log.info("analysis summary: %s", result.summary)
