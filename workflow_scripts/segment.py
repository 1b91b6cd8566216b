"""Snakemake script: segment the fields of one plate x shard; write masks and the QC table."""

from hcsflow.io import MaskWriter, file_checksum, make_provenance, read_table, write_table
from hcsflow.logutil import log_to
from hcsflow.segmentation.shard import load_illumination, segment_fields, segmenter_from_config

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    seg = p.segmentation
    manifest = read_table(sm.input.manifest)
    rows = manifest[manifest["Metadata_Well"].isin(p.wells)]
    segmenter = segmenter_from_config(seg)
    dropped = []
    # masks go to the archive field by field (moved into place only if every field succeeds)
    with MaskWriter(sm.output.masks) as masks:
        _, qc = segment_fields(
            rows,
            p.channels,
            segmenter,
            None if seg["estimate_mpp"] else p.image_mpp,
            illumination=load_illumination(p.illumination),
            weights=seg["channel_weights"],
            fields_per_batch=seg["fields_per_batch"],
            on_bad_image=p.on_bad_image,
            dropped=dropped,
            root=p.images,
            masks_out=masks,
        )
    inputs = {"manifest": file_checksum(sm.input.manifest)}
    inputs.update({k: file_checksum(v) for k, v in sm.input.items() if k.startswith("illum_")})
    if "model" in sm.input.keys():
        inputs["model"] = file_checksum(sm.input.model)
    extra = {"shard": sm.wildcards.shard, "wells": list(p.wells)}
    if dropped:  # fields whose files failed to decode (discovery.on_bad_image: drop)
        extra["dropped"] = [e.record() for e in dropped]
    prov = make_provenance(
        "segment",
        config={"segmentation": seg, "channels": p.channels, "image_mpp": p.image_mpp},
        inputs=inputs,
        extra=extra,
    )
    write_table(qc, sm.output.qc, prov)
    log.info(
        "plate %s shard %s: %d fields, %d cells, %d flagged, %d dropped",
        sm.wildcards.plate,
        sm.wildcards.shard,
        len(qc),
        int(qc["Count_Cells"].sum()),
        int((qc["flags"] != "").sum()),
        len(dropped),
    )
