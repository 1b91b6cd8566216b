"""Snakemake script: outlines of a few fields of one plate, as a PNG for QC."""

from pathlib import Path

from hcsflow.io import read_table
from hcsflow.logutil import log_to
from hcsflow.segmentation.shard import load_illumination, render_plate_overlays

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    results = Path(sm.input.masks[0]).parents[2]  # {results}/masks/{plate}/{shard}.npz
    chosen = render_plate_overlays(
        results,
        sm.wildcards.plate,
        read_table(sm.input.manifest),
        p.channels,
        sm.output.png,
        n_fields=p.segmentation["overlay_fields"],
        crop=p.segmentation["overlay_crop"],
        illumination=load_illumination(p.illumination),
        weights=p.segmentation["channel_weights"],
        on_bad_image=p.on_bad_image,
        root=p.images,
    )
    log.info(
        "plate %s: overlays of %s",
        sm.wildcards.plate,
        ", ".join(
            f"{w} s{s}"
            for w, s in zip(chosen["Metadata_Well"], chosen["Metadata_Site"], strict=True)
        ),
    )
