"""Snakemake script: a deterministic sample of cell crops of one plate (embedder training)."""

from hcsflow.features.embed_train import write_sample
from hcsflow.features.shard import sample_fields
from hcsflow.io import read_table
from hcsflow.logutil import log_to
from hcsflow.segmentation.shard import load_illumination

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    emb = p.embedding
    crops, meta = sample_fields(
        read_table(sm.input.manifest),
        p.channels,
        list(sm.input.masks),
        illumination=load_illumination(p.illumination),
        crop_um=emb["crop_um"],
        image_mpp=p.image_mpp,
        cells_per_field=emb["train"]["cells_per_field"],
        seed=emb["train"]["seed"],
        on_bad_image=p.on_bad_image,
        root=p.images,
    )
    write_sample(sm.output[0], crops, meta, image_mpp=p.image_mpp, channel_names=p.channels)
    log.info("plate %s: %d crops of %s", sm.wildcards.plate, len(crops), crops.shape[1:])
