# Analysis of the campaign's profiles (phenotypic activity, MoA consistency, UMAP, clusters)
# and the offline HTML report.


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
        disk_mb=DISK_MB,
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
        # figures of the image stages, so that the report is written after them
        figures=report_figures(),
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
        disk_mb=DISK_MB,
        runtime=30,
    params:
        report=config["report"],
    script:
        "../workflow_scripts/report.py"
