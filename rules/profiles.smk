# Well profiles per plate, then campaign-level feature selection, batch correction, consensus.
# Final outputs: f"{RESULTS}/campaign/profiles.parquet", f"{RESULTS}/campaign/consensus.parquet".


rule negcon_cells:
    input:
        cells=lambda wc: plate_cell_tables(wc.plate),
    output:
        f"{RESULTS}/projection/negcon/{{plate}}.npz",
    log:
        f"{LOGS}/projection/negcon_{{plate}}.log",
    benchmark:
        f"{BENCH}/projection/negcon_{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        disk_mb=DISK_MB,
        runtime=30,
    params:
        # only the keys the sample depends on: another dispersion or aggregation setting
        # does not refit the campaign's projection
        projection=config["profiles"]["projection"],
        control_role=config["profiles"]["control_role"],
        qc_columns=config["profiles"]["qc_columns"],
        blocklist=config["campaign"]["feature_select"]["blocklist"],
    script:
        "../workflow_scripts/negcon_cells.py"


rule cell_projection:
    input:
        samples=expand(f"{RESULTS}/projection/negcon/{{plate}}.npz", plate=PLATES.index),
    output:
        f"{RESULTS}/projection/projection.npz",
    log:
        f"{LOGS}/projection/projection.log",
    benchmark:
        f"{BENCH}/projection/projection.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        disk_mb=DISK_MB,
        runtime=60,
    params:
        projection=config["profiles"]["projection"],
    script:
        "../workflow_scripts/cell_projection.py"


rule profiles:
    input:
        unpack(profiles_inputs),
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
