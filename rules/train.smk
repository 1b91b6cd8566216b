# Training the segmentation network. Not part of rule all; run by target, e.g.
#   snakemake --cores 2 results/models/segmenter.pt
# Options come from the optional config block segmentation.train (keys: dsb, user, user_mpp,
# sim_fields, steps, seed, device). The checkpoint is protected: retraining means deleting it.
from hcsflow.segmentation.commands import options_from_config


rule train_segmenter:
    output:
        model=protected(f"{RESULTS}/models/segmenter.pt"),
        card=f"{RESULTS}/models/segmenter.md",
    log:
        f"{LOGS}/train_segmenter.log",
    benchmark:
        f"{BENCH}/train_segmenter.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        disk_mb=DISK_MB,
        runtime=480,
    params:
        options=options_from_config(
            config.get("segmentation", {}).get("train"),
            config.get("image_mpp", 0.65),
            SCHEMA_PATH,
        ),
    script:
        "../workflow_scripts/train_segmenter.py"
