"""Snakemake script: list a plate folder and write its manifest and discovery QC table."""

import os

from hcsflow.discover import discover_plate
from hcsflow.io import file_checksum, make_provenance, write_table
from hcsflow.logutil import log_to

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    opts = p.discovery
    result = discover_plate(
        sm.wildcards.plate,
        p.images,
        p.layout,
        sm.input.platemap,
        p.channels,
        batch=p.batch,
        on_missing_channel=opts["on_missing_channel"],
        on_unmapped_well=opts["on_unmapped_well"],
        on_bad_image=opts["on_bad_image"],
        plane=opts["plane"],
        timepoint=opts["timepoint"],
    )
    prov = make_provenance(
        "discover",
        config={"layout": p.layout, "channels": p.channels, "discovery": opts},
        inputs={
            "platemap": file_checksum(sm.input.platemap),
            "image_listing": result.listing_digest,
        },
    )
    write_table(result.qc, sm.output.qc, prov)
    write_table(result.manifest, sm.output.manifest, prov)
    log.info(
        "plate %s: %d files, %d fields in the manifest, %d QC records",
        sm.wildcards.plate,
        result.n_files,
        len(result.manifest),
        len(result.qc),
    )
    for rec in result.qc[result.qc["Issue"] == "bad_image"].itertuples():
        log.warning(
            "dropped well %s site %s (discovery.on_bad_image: drop): channel %s, image %s: %s",
            rec.Metadata_Well,
            rec.Metadata_Site,
            rec.Channel,
            os.path.join(p.images, rec.File),
            rec.Detail,
        )
