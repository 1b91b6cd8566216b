# Segmentation: one job per plate x shard writes the shard's masks and a per-field QC table;
# one job per plate draws outlines on a few fields for QC.


def segmentation_model():
    """Checkpoint of the deep method (an input, so a new model reruns the jobs), or None."""
    seg = config["segmentation"]
    if seg["method"] != "deep":
        return None
    if seg["model"]:
        return seg["model"]
    from hcsflow.segmentation.segmenter import default_model_path

    return str(default_model_path())


def segmentation_illumination(plate):
    """Illumination profiles {channel: npz} of a plate, {} when correction is off."""
    func = globals().get("illumination_inputs")
    return dict(func(plate)) if func is not None else {}


def segment_inputs(wildcards):
    inputs = {"manifest": f"{RESULTS}/manifest/{wildcards.plate}.parquet"}
    model = segmentation_model()
    if model is not None:
        inputs["model"] = model
    for channel, path in segmentation_illumination(wildcards.plate).items():
        inputs[f"illum_{channel}"] = path
    return inputs


def segmentation_gpu():
    seg = config["segmentation"]
    return 1 if seg["method"] == "deep" and seg["device"] == "cuda" else 0


def segmentation_targets():
    """QC tables of every plate x shard and the overlay figure of every plate."""
    targets = []
    for plate in PLATES.index:
        targets += expand(
            f"{RESULTS}/segmentation/{plate}/{{shard}}.parquet",
            shard=plate_shards(plate),
        )
        targets.append(f"{RESULTS}/qc/{plate}_overlays.png")
    return targets


rule segment:
    input:
        unpack(segment_inputs),
    output:
        masks=f"{RESULTS}/masks/{{plate}}/{{shard}}.npz",
        qc=f"{RESULTS}/segmentation/{{plate}}/{{shard}}.parquet",
    log:
        f"{LOGS}/segment/{{plate}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/segment/{{plate}}/{{shard}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: config["segmentation"]["threads"]
    resources:
        mem_mb=config["segmentation"]["mem_mb"],
        runtime=lambda wc: int(
            10
            + config["segmentation"]["runtime_per_well"]
            * len(shard_wells(wc.plate, wc.shard))
        ),
        gpu=segmentation_gpu(),
    params:
        wells=lambda wc: list(shard_wells(wc.plate, wc.shard)),
        illumination=lambda wc: segmentation_illumination(wc.plate),
        channels=CHANNELS,
        image_mpp=config["image_mpp"],
        segmentation=config["segmentation"],
    script:
        "../workflow_scripts/segment.py"


rule segmentation_overlays:
    input:
        unpack(segment_inputs),
        masks=lambda wc: expand(
            f"{RESULTS}/masks/{{plate}}/{{shard}}.npz",
            plate=wc.plate,
            shard=plate_shards(wc.plate),
        ),
    output:
        png=f"{RESULTS}/qc/{{plate}}_overlays.png",
    log:
        f"{LOGS}/segmentation_overlays/{{plate}}.log",
    benchmark:
        f"{BENCH}/segmentation_overlays/{{plate}}.tsv"
    conda:
        "../envs/hcsflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        results=RESULTS,
        illumination=lambda wc: segmentation_illumination(wc.plate),
        channels=CHANNELS,
        segmentation=config["segmentation"],
    script:
        "../workflow_scripts/segment_overlays.py"
