# Illumination: per plate x channel flat-field and dark-field, estimated from a deterministic
# sample of fields (of the plate, or of every plate of its batch) and applied in memory by the
# later stages (segmentation, features) through illumination_inputs(plate).

ILLUM = config["illumination"]


def illumination_group(plate):
    """Plates whose fields enter the estimate of ``plate`` (itself, or its whole batch)."""
    if ILLUM["group_by"] == "batch":
        batch = PLATES.loc[plate, "batch"]
        return sorted(PLATES.index[PLATES["batch"] == batch])
    return [plate]


def illumination_inputs(plate):
    """Channel name -> flat/dark-field npz of a plate; {} when no correction is configured."""
    if ILLUM["method"] == "none":
        return {}
    return {ch: f"{RESULTS}/illumination/{plate}/{ch}.npz" for ch in CHANNEL_NAMES}


def illumination_targets():
    """Final outputs of the illumination stage."""
    if ILLUM["method"] == "none":
        return []
    targets = [
        f"{RESULTS}/illumination/{plate}/{ch}.{ext}"
        for plate in PLATES.index
        for ch in CHANNEL_NAMES
        for ext in ("npz", "png")
    ]
    if ILLUM["write_corrected"]:
        targets += [
            f"{RESULTS}/illumination/{plate}/corrected" for plate in PLATES.index
        ]
    return targets


rule illumination:
    input:
        manifests=lambda wc: [
            f"{RESULTS}/manifest/{p}.parquet" for p in illumination_group(wc.plate)
        ],
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
        mem_mb=4000,
        runtime=30,
    params:
        plates=lambda wc: illumination_group(wc.plate),
        illumination=ILLUM,
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
        runtime=120,
    params:
        channels=lambda wc: list(illumination_inputs(wc.plate)),
    script:
        "../workflow_scripts/illumination_correct.py"


if "register_targets" in globals():
    register_targets(illumination_targets)
