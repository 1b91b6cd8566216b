# Plate discovery: one manifest per plate (one row per field), listing the folder in the job.


rule discover:
    input:
        platemap=lambda wc: plate_row(wc.plate)["platemap"],
        # rewritten at start-up only when the plate's image folder changed
        listing=f"{LISTINGS}/{{plate}}.tsv",
    output:
        manifest=f"{RESULTS}/manifest/{{plate}}.parquet",
        qc=f"{RESULTS}/qc/{{plate}}_discovery.parquet",
    log:
        f"{LOGS}/discover/{{plate}}.log",
    benchmark:
        f"{BENCH}/discover/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,  # peak 0.15 GB (docs/performance.md)
        disk_mb=DISK_MB,
        runtime=15,
    params:
        images=lambda wc: plate_row(wc.plate)["images"],
        layout=lambda wc: plate_row(wc.plate)["layout"],
        batch=lambda wc: plate_row(wc.plate)["batch"],
        channels=CHANNELS,
        discovery=config["discovery"],
    script:
        "../workflow_scripts/discover.py"
