"""Snakemake script: estimate one channel's flat-field and dark-field from sampled fields.

For a plate whose batch estimate exists (``illumination.group_by: batch``) the plate's file is
a copy of the batch's, with the plate named in its description.
"""

import shutil

import pandas as pd

from hcsflow import illumination as il
from hcsflow.io import atomic_path, read_table
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    opts = p.illumination
    channel = sm.wildcards.channel
    if "batch_npz" in sm.input.keys():
        flat, dark = il.load(sm.input.batch_npz)
        meta = {**il.load_meta(sm.input.batch_npz), "plate": sm.wildcards.plate}
        il.save(sm.output.npz, flat, dark, meta)
        with atomic_path(sm.output.png) as tmp:
            shutil.copyfile(sm.input.batch_png, tmp)
        log.info("copied the estimate of %s to plate %s", meta["group"], p.label)
        log.info("%s", il.summarize(meta, flat, dark))
    else:
        manifest = pd.concat([read_table(path) for path in sm.input.manifests], ignore_index=True)
        screening = il.ScreeningParams(
            blank_fraction=opts["blank_fraction"],
            saturated_fraction=opts["saturated_fraction"],
            focus_fraction=opts["focus_fraction"],
            saturation_value=opts["saturation_value"],
        )
        result = il.estimate_from_manifest(
            manifest,
            channel,
            opts["method"],
            max_fields=opts["max_fields"],
            seed=opts["seed"],
            darkfield=opts["darkfield"],
            dark=opts["dark"],
            dark_pattern=opts["dark_pattern"],
            working_size=opts["working_size"],
            max_frequency=opts["max_frequency"],
            smoothing=opts["smoothing"],
            min_fields=opts["min_fields"],
            fallback=opts["fallback"],
            screen=opts["screen"],
            screening=screening,
            on_bad_image=p.on_bad_image,
            root=dict(p.images),
        )
        for rec in result.dropped:
            log.warning(
                "left out of the estimate (discovery.on_bad_image: drop): plate %s well %s "
                "site %s channel %s, image %s: %s",
                rec["Metadata_Plate"],
                rec["Metadata_Well"],
                rec["Metadata_Site"],
                rec["Channel"],
                rec["File"],
                rec["Reason"],
            )
        meta = {
            **result.meta(),
            "group": p.label,
            "channel": channel,
            "plates": list(p.plates),
            "config": dict(opts),
        }
        if "plate" in sm.wildcards.keys():
            meta["plate"] = sm.wildcards.plate
        il.save(sm.output.npz, result.flatfield, result.darkfield, meta)
        il.plot(
            sm.output.png,
            result.flatfield,
            result.darkfield,
            f"{p.label} / {channel} ({result.method}, "
            f"{int(result.used.sum())} of {result.n_fields} fields)",
            note=il.dark_note(result.details),
        )
        log.info("%s", il.summarize(meta, result.flatfield, result.darkfield))
