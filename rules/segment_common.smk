# Helpers of the segmentation rules (rules/segment.smk): inputs, resources and targets.


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
