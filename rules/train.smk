# Training the segmentation network (not part of rule all; run by target:
#   snakemake --cores 2 results/models/segmenter.pt
# ). The trained checkpoint is protected: retraining means deleting it on purpose.
import shlex


def _train_segmenter_args():
    """Command-line options of ``hcsflow train-segmenter`` from ``segmentation.train``."""
    train = config.get("segmentation", {}).get("train", {})
    args = []
    if train.get("dsb"):
        args += ["--dsb", str(train["dsb"])]
    for folder in train.get("user", []):
        args += ["--user", str(folder)]
    if train.get("user_mpp"):
        args += ["--user-mpp", str(train["user_mpp"])]
    args += ["--sim", str(train.get("sim_fields", 48))]
    args += ["--sim-mpp", str(config.get("image_mpp", 0.65))]
    args += ["--steps", str(train.get("steps", 3000))]
    args += ["--seed", str(train.get("seed", 0))]
    args += ["--device", str(train.get("device", "cpu"))]
    return " ".join(shlex.quote(a) for a in args)


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
        runtime=480,
    params:
        args=_train_segmenter_args(),
    shell:
        "python -m hcsflow.cli train-segmenter --out {output.model} --threads {threads} "
        "{params.args} > {log} 2>&1"
