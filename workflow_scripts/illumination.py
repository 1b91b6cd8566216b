"""Snakemake script: estimate one channel's flat-field and dark-field from sampled fields."""

import pandas as pd

from hcsflow import illumination as il
from hcsflow.io import read_table
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    opts = p.illumination
    manifest = pd.concat([read_table(path) for path in sm.input.manifests], ignore_index=True)
    screening = il.ScreeningParams(
        blank_fraction=opts["blank_fraction"],
        saturated_fraction=opts["saturated_fraction"],
        focus_fraction=opts["focus_fraction"],
        saturation_value=opts["saturation_value"],
    )
    result = il.estimate_from_manifest(
        manifest,
        sm.wildcards.channel,
        opts["method"],
        max_fields=opts["max_fields"],
        seed=opts["seed"],
        darkfield=opts["darkfield"],
        dark_pattern=opts["dark_pattern"],
        working_size=opts["working_size"],
        max_frequency=opts["max_frequency"],
        min_fields=opts["min_fields"],
        fallback=opts["fallback"],
        screen=opts["screen"],
        screening=screening,
    )
    meta = {
        **result.meta(),
        "plate": sm.wildcards.plate,
        "channel": sm.wildcards.channel,
        "plates": list(p.plates),
        "config": dict(opts),
    }
    il.save(sm.output.npz, result.flatfield, result.darkfield, meta)
    il.plot(
        sm.output.png,
        result.flatfield,
        result.darkfield,
        f"{sm.wildcards.plate} / {sm.wildcards.channel} ({result.method}, "
        f"{int(result.used.sum())} of {result.n_fields} fields)",
    )
    log.info("%s", meta)
