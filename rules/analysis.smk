# Analysis of the campaign's profiles (phenotypic activity, MoA consistency, UMAP, clusters)
# and the offline HTML report.


# Final outputs of the analysis stage and the report.
ANALYSIS_TARGETS = [
    f"{RESULTS}/analysis/activity.parquet",
    f"{RESULTS}/analysis/consistency.parquet",
    f"{RESULTS}/analysis/clusters.parquet",
    f"{RESULTS}/analysis/dose_response.parquet",
    f"{RESULTS}/report/index.html",
]


rule analysis:
    input:
        profiles=f"{RESULTS}/campaign/profiles.parquet",
        consensus=f"{RESULTS}/campaign/consensus.parquet",
    output:
        activity=f"{RESULTS}/analysis/activity.parquet",
        consistency=f"{RESULTS}/analysis/consistency.parquet",
        clusters=f"{RESULTS}/analysis/clusters.parquet",
        dose_response=f"{RESULTS}/analysis/dose_response.parquet",
    log:
        f"{LOGS}/analysis/analysis.log",
    benchmark:
        f"{BENCH}/analysis/analysis.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        analysis=config["analysis"],
    script:
        "../workflow_scripts/analysis.py"


rule report:
    input:
        rules.analysis.output,
        profiles=f"{RESULTS}/campaign/profiles.parquet",
        consensus=f"{RESULTS}/campaign/consensus.parquet",
    output:
        html=f"{RESULTS}/report/index.html",
    log:
        f"{LOGS}/report/report.log",
    benchmark:
        f"{BENCH}/report/report.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        report=config["report"],
    script:
        "../workflow_scripts/report.py"
