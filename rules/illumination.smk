# Illumination: per plate x channel flat-field and dark-field, estimated from a deterministic
# sample of fields and applied in memory by the later stages (segmentation, features) through
# illumination_inputs(plate). With illumination.group_by: batch the estimate is made once per
# batch x channel (rule illumination_batch) and each plate of the batch gets a copy of it.


rule illumination_batch:
    input:
        manifests=lambda wc: [
            f"{RESULTS}/manifest/{p}.parquet" for p in batch_plates(wc.batch)
        ],
    output:
        npz=f"{RESULTS}/illumination/batches/{{batch}}/{{channel}}.npz",
        png=f"{RESULTS}/illumination/batches/{{batch}}/{{channel}}.png",
    log:
        f"{LOGS}/illumination/batch_{{batch}}_{{channel}}.log",
    benchmark:
        f"{BENCH}/illumination/batch_{{batch}}_{{channel}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,  # peak 0.94 GB from 200 sampled 1080² fields (docs/performance.md)
        disk_mb=DISK_MB,
        runtime=30,
    params:
        plates=lambda wc: batch_plates(wc.batch),
        images=lambda wc: plates_images(batch_plates(wc.batch)),
        illumination=config["illumination"],
        on_bad_image=config["discovery"]["on_bad_image"],
        label=lambda wc: f"batch {wc.batch}",
    script:
        "../workflow_scripts/illumination.py"


rule illumination:
    input:
        unpack(illumination_source),
    output:
        npz=f"{RESULTS}/illumination/{{plate}}/{{channel}}.npz",
        png=f"{RESULTS}/illumination/{{plate}}/{{channel}}.png",
    log:
        f"{LOGS}/illumination/{{plate}}_{{channel}}.log",
    benchmark:
        f"{BENCH}/illumination/{{plate}}_{{channel}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,  # peak 0.94 GB from 200 sampled 1080² fields (docs/performance.md)
        disk_mb=DISK_MB,
        runtime=30,
    params:
        plates=lambda wc: [wc.plate],
        images=lambda wc: plates_images([wc.plate]),
        illumination=config["illumination"],
        on_bad_image=config["discovery"]["on_bad_image"],
        label=lambda wc: wc.plate,
    script:
        "../workflow_scripts/illumination.py"


rule illumination_corrected:
    input:
        manifest=f"{RESULTS}/manifest/{{plate}}.parquet",
        npz=lambda wc: list(illumination_inputs(wc.plate).values()),
    output:
        folder=directory(f"{RESULTS}/illumination/{{plate}}/corrected"),
    log:
        f"{LOGS}/illumination/{{plate}}_corrected.log",
    benchmark:
        f"{BENCH}/illumination/{{plate}}_corrected.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        disk_mb=DISK_MB,
        runtime=120,
    params:
        channels=lambda wc: list(illumination_inputs(wc.plate)),
        images=plate_images,
    script:
        "../workflow_scripts/illumination_correct.py"
