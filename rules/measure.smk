# Per-cell measurements: one job per plate x shard reads the shard's raw images and masks,
# corrects illumination in memory and writes one row per cell (CellProfiler-class features
# and, when configured, CNN embeddings) and one row of image quality per field.
# With a trained embedder (embedding.method weakly_supervised / self_supervised), a sample of
# cell crops is drawn per plate (rule embed_sample) and the embedder is trained once per
# campaign (rule train_embedder) before the measure jobs run.


rule measure:
    input:
        unpack(measure_inputs),
    output:
        cells=f"{RESULTS}/cells/{{plate}}/{{shard}}.parquet",
        qc=f"{RESULTS}/qc/{{plate}}/{{shard}}.parquet",
    log:
        f"{LOGS}/measure/{{plate}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/measure/{{plate}}/{{shard}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: config["features"]["threads"]
    resources:
        mem_mb=config["features"]["mem_mb"],
        disk_mb=DISK_MB,
        runtime=shard_runtime("features"),
        gpu=embedding_gpu(),
    params:
        wells=lambda wc: list(shard_wells(wc.plate, wc.shard)),
        images=plate_images,
        illumination=lambda wc: illumination_inputs(wc.plate),
        channels=CHANNEL_NAMES,
        image_mpp=config["image_mpp"],
        features=config["features"],
        embedding=config["embedding"],
        on_bad_image=config["discovery"]["on_bad_image"],
    script:
        "../workflow_scripts/measure.py"


rule embed_sample:
    input:
        manifest=f"{RESULTS}/manifest/{{plate}}.parquet",
        masks=lambda wc: expand(
            f"{RESULTS}/masks/{{plate}}/{{shard}}.npz",
            plate=wc.plate,
            shard=plate_shards(wc.plate),
        ),
        illumination=lambda wc: list(illumination_inputs(wc.plate).values()),
    output:
        temp(f"{RESULTS}/embedding/samples/{{plate}}.npz"),
    log:
        f"{LOGS}/embed_sample/{{plate}}.log",
    benchmark:
        f"{BENCH}/embed_sample/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        disk_mb=DISK_MB,
        runtime=30,
    params:
        images=plate_images,
        illumination=lambda wc: illumination_inputs(wc.plate),
        channels=CHANNEL_NAMES,
        image_mpp=config["image_mpp"],
        embedding=config["embedding"],
        on_bad_image=config["discovery"]["on_bad_image"],
    script:
        "../workflow_scripts/embed_sample.py"


rule train_embedder:
    input:
        samples=expand(f"{RESULTS}/embedding/samples/{{plate}}.npz", plate=PLATES.index),
    output:
        model=protected(f"{RESULTS}/models/embedder.pt"),
        card=f"{RESULTS}/models/embedder.md",
    log:
        f"{LOGS}/train_embedder.log",
    benchmark:
        f"{BENCH}/train_embedder.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: config["embedding"]["train"]["threads"]
    resources:
        mem_mb=8000,
        disk_mb=DISK_MB,
        runtime=240,
        gpu=embedding_gpu(),
    params:
        embedding=config["embedding"],
    script:
        "../workflow_scripts/train_embedder.py"
