# Well profiles per plate, then campaign-level feature selection, batch correction, consensus.


def profiles_inputs(wildcards):
    """Per-cell tables of every shard of a plate."""
    return [
        f"{RESULTS}/cells/{wildcards.plate}/{shard}.parquet"
        for shard in plate_shards(wildcards.plate)
    ]


def campaign_inputs(wildcards):
    """All plates' well profiles, or the user's table of profiles (config input_profiles)."""
    if config["input_profiles"]:
        return [config["input_profiles"]]
    return expand(f"{RESULTS}/profiles/{{plate}}.parquet", plate=PLATES.index)


def profiles_targets():
    """Final outputs of the profiles and campaign stages."""
    return [
        f"{RESULTS}/campaign/profiles.parquet",
        f"{RESULTS}/campaign/consensus.parquet",
    ]


rule profiles:
    input:
        cells=profiles_inputs,
    output:
        f"{RESULTS}/profiles/{{plate}}.parquet",
    log:
        f"{LOGS}/profiles/{{plate}}.log",
    benchmark:
        f"{BENCH}/profiles/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        profiles=config["profiles"],
    script:
        "../workflow_scripts/profiles.py"


rule campaign:
    input:
        profiles=campaign_inputs,
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
        runtime=60,
    params:
        profiles=config["profiles"],
        campaign=config["campaign"],
        input_profiles=config["input_profiles"],
        input_profiles_columns=config["input_profiles_columns"],
    script:
        "../workflow_scripts/campaign.py"
