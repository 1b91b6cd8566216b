# Segmentation: one job per plate x shard writes the shard's masks and a per-field QC table;
# one job per plate draws outlines on a few fields for QC. Helpers: rules/common.smk.


rule segment:
    input:
        unpack(segment_inputs),
    output:
        masks=f"{RESULTS}/masks/{{plate}}/{{shard}}.npz",
        qc=f"{RESULTS}/segmentation/{{plate}}/{{shard}}.parquet",
    log:
        f"{LOGS}/segment/{{plate}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/segment/{{plate}}/{{shard}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: config["segmentation"]["threads"]
    resources:
        mem_mb=config["segmentation"]["mem_mb"],
        disk_mb=DISK_MB,
        runtime=shard_runtime("segmentation"),
        gpu=segmentation_gpu(),
    params:
        wells=lambda wc: list(shard_wells(wc.plate, wc.shard)),
        images=plate_images,
        illumination=lambda wc: segmentation_illumination(wc.plate),
        channels=CHANNELS,
        image_mpp=config["image_mpp"],
        segmentation=config["segmentation"],
        on_bad_image=config["discovery"]["on_bad_image"],
    script:
        "../workflow_scripts/segment.py"


rule segmentation_overlays:
    input:
        unpack(segment_inputs),
        masks=lambda wc: expand(
            f"{RESULTS}/masks/{{plate}}/{{shard}}.npz",
            plate=wc.plate,
            shard=plate_shards(wc.plate),
        ),
    output:
        png=f"{RESULTS}/qc/{{plate}}_overlays.png",
    log:
        f"{LOGS}/segmentation_overlays/{{plate}}.log",
    benchmark:
        f"{BENCH}/segmentation_overlays/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,  # peak 0.52 GB (docs/performance.md)
        disk_mb=DISK_MB,
        runtime=10,
    params:
        images=plate_images,
        illumination=lambda wc: segmentation_illumination(wc.plate),
        channels=CHANNELS,
        segmentation=config["segmentation"],
        on_bad_image=config["discovery"]["on_bad_image"],
    script:
        "../workflow_scripts/segment_overlays.py"
