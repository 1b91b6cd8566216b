"""Snakemake script: per-cell measurements (and embeddings) of one plate x shard."""

import os

# torch's OpenMP threads must not spin while the job's other threads (or jobs) need the core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from hcsflow.features.core import MeasureParams
from hcsflow.features.embed import Embedder
from hcsflow.features.shard import measure_fields
from hcsflow.io import file_checksum, make_provenance, read_table, write_table
from hcsflow.logutil import log_to
from hcsflow.segmentation.shard import load_illumination

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    manifest = read_table(sm.input.manifest)
    rows = manifest[manifest["Metadata_Well"].isin(p.wells)]
    emb = p.embedding
    embedder = None
    if emb["method"] != "none":
        source = sm.input.get("embedder") or (
            emb["checkpoint"] if emb["method"] == "checkpoint" else emb["method"]
        )
        embedder = Embedder.load(
            source,
            device=emb["device"],
            batch_size=emb["batch_size"],
            # trained checkpoints keep the crop size they were trained with
            crop_um=emb["crop_um"] if emb["method"] == "imagenet" else None,
            channels=list(p.channels),
            threads=sm.threads,
        )
    dropped = []
    cells, quality = measure_fields(
        rows,
        p.channels,
        sm.input.masks,
        illumination=load_illumination(p.illumination),
        params=MeasureParams.from_config(p.features),
        embedder=embedder,
        image_mpp=p.image_mpp,
        dtype=p.features["dtype"],
        on_bad_image=p.on_bad_image,
        dropped=dropped,
        root=p.images,
    )
    inputs = {k: file_checksum(v) for k, v in sm.input.items()}
    extra = {"shard": sm.wildcards.shard, "wells": list(p.wells)}
    if dropped:  # fields whose files failed to decode (discovery.on_bad_image: drop)
        extra["dropped"] = [e.record() for e in dropped]
    prov = make_provenance(
        "measure",
        config={
            "features": p.features,
            "embedding": emb,
            "channels": list(p.channels),
            "image_mpp": p.image_mpp,
        },
        inputs=inputs,
        extra=extra,
    )
    write_table(quality, sm.output.qc, prov)
    write_table(cells, sm.output.cells, prov)
    log.info(
        "plate %s shard %s: %d fields, %d cells x %d columns, %d fields dropped",
        sm.wildcards.plate,
        sm.wildcards.shard,
        len(quality),
        len(cells),
        cells.shape[1],
        len(dropped),
    )
