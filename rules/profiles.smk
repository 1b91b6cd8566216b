# Well profiles per plate, then campaign-level feature selection, batch correction, consensus.
# Final outputs: f"{RESULTS}/campaign/profiles.parquet", f"{RESULTS}/campaign/consensus.parquet".


rule profiles:
    input:
        cells=lambda wc: [
            f"{RESULTS}/cells/{wc.plate}/{shard}.parquet"
            for shard in plate_shards(wc.plate)
        ],
    output:
        f"{RESULTS}/profiles/{{plate}}.parquet",
    log:
        f"{LOGS}/profiles/{{plate}}.log",
    benchmark:
        f"{BENCH}/profiles/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,  # peak 0.97 GB: one shard's cells at a time (docs/performance.md)
        disk_mb=DISK_MB,
        runtime=30,
    params:
        profiles=config["profiles"],
    script:
        "../workflow_scripts/profiles.py"


rule campaign:
    input:
        # the user's table of well profiles (config input_profiles), or every plate's profiles
        profiles=(
            [config["input_profiles"]]
            if config["input_profiles"]
            else expand(f"{RESULTS}/profiles/{{plate}}.parquet", plate=PLATES.index)
        ),
    output:
        profiles=f"{RESULTS}/campaign/profiles.parquet",
        consensus=f"{RESULTS}/campaign/consensus.parquet",
    log:
        f"{LOGS}/campaign/campaign.log",
    benchmark:
        f"{BENCH}/campaign/campaign.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        disk_mb=DISK_MB,
        runtime=60,
    params:
        profiles=config["profiles"],
        campaign=config["campaign"],
        input_profiles=config["input_profiles"],
        input_profiles_columns=config["input_profiles_columns"],
    script:
        "../workflow_scripts/campaign.py"
