# Configuration validation, plate sheet reading and helpers shared by every stage.
# Every check runs here, at parse time, so a bad configuration stops the run before any job.
import re
import sys
from pathlib import Path

from hcsflow.config import SCHEMA_PATH, ConfigError, load_workflow_config
from hcsflow.listing import ListingError, should_list, update_listings

try:
    WF = load_workflow_config(config, schema=SCHEMA_PATH)
except ConfigError as err:
    sys.exit(f"hcsflow: the configuration cannot be used:\n{err}")

config.update(WF.config)
RESULTS = WF.results
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PLATES = WF.plates
CHANNELS = WF.channels
CHANNEL_NAMES = [ch["name"] for ch in CHANNELS]
LISTINGS = f"{RESULTS}/listing"


def execution_mode():
    """Snakemake's execution mode by name (default, subprocess, remote), None if unknown."""
    mode = getattr(workflow, "exec_mode", None)
    return None if mode is None else getattr(mode, "name", str(mode))


# Each plate's image listing (relative path, size, mtime) is an input of its discovery job and
# is rewritten only when the folder changed, so re-imaged or added fields rerun that plate from
# discovery on. Listed by the main process only (jobs that re-read the workflow skip it).
if len(PLATES) and should_list(execution_mode()):
    try:
        _changed = update_listings(
            [(plate, row["images"], row["layout"]) for plate, row in PLATES.iterrows()],
            LISTINGS,
            sheet=config["plates"],
        )
    except ListingError as err:
        sys.exit(f"hcsflow: the configuration cannot be used:\n{err}")
    if _changed:
        _more = f" and {len(_changed) - 10} more" if len(_changed) > 10 else ""
        print(
            f"hcsflow: image listing of {len(_changed)} plate(s) written (new or changed "
            f"image folder): {', '.join(_changed[:10])}{_more}",
            file=sys.stderr,
        )


wildcard_constraints:
    plate="|".join(map(re.escape, PLATES.index)) if len(PLATES) else "[^/]+",
    shard=r"\d{3}",
    channel="|".join(CHANNEL_NAMES),
    batch=(
        "|".join(map(re.escape, sorted(set(PLATES["batch"]) - {""})))
        if len(PLATES) and (PLATES["batch"] != "").any()
        else "[^/]+"
    ),


# Scratch disk of every job (MB): jobs write into the results folder, not to local scratch.
# Declared so that Snakemake does not evaluate its default (twice the inputs' size, which stats
# every input file) for each of a campaign's thousands of jobs.
DISK_MB = 1000


def shard_runtime(section):
    """Minutes requested by a plate x shard job of ``section``: 10 + runtime_per_well x shard.

    A constant for the configured shard size (a plate's last shard may have fewer wells), so
    that the thousands of shard jobs of a campaign need no per-job function call.
    """
    per_well = config[section]["runtime_per_well"]
    return int(10 + per_well * config["shards"]["wells_per_shard"])


# Final outputs of the analysis stage and the report.
ANALYSIS_TARGETS = [
    f"{RESULTS}/analysis/activity.parquet",
    f"{RESULTS}/analysis/consistency.parquet",
    f"{RESULTS}/analysis/clusters.parquet",
    f"{RESULTS}/analysis/dose_response.parquet",
    f"{RESULTS}/report/index.html",
]


def all_targets():
    """Final outputs of every stage that can run (the inputs of rule all)."""
    targets = []
    if not config["input_profiles"]:
        targets += expand(f"{RESULTS}/manifest/{{plate}}.parquet", plate=PLATES.index)
        targets += illumination_targets()
        targets += segmentation_targets()
    targets += ANALYSIS_TARGETS
    return targets


def report_figures():
    """Figures of the image stages that the report shows (none in a profile-level run)."""
    if config["input_profiles"]:
        return []
    figures = [t for t in illumination_targets() if t.endswith(".png")]
    return figures + [f"{RESULTS}/qc/{plate}_overlays.png" for plate in PLATES.index]


def plate_row(plate):
    """The plate sheet row of a plate (images, layout, platemap, batch)."""
    return PLATES.loc[plate]


def plate_images(wildcards):
    """Image folder of a plate (the plate sheet's images), which manifest paths are relative to."""
    return plate_row(wildcards.plate)["images"]


def plates_images(plates):
    """Plate -> image folder of several plates (the jobs that read a batch's manifests)."""
    return {plate: plate_row(plate)["images"] for plate in plates}


def plate_shards(plate):
    """Shard ids of a plate (groups of wells from its plate map, in plate order)."""
    return list(WF.shards[plate])


def shard_wells(plate, shard):
    """Wells of one shard of a plate."""
    return WF.shards[plate][shard]


# --- illumination ---------------------------------------------------------------------


def batch_plates(batch):
    """Plates of a batch (plate sheet column ``batch``), sorted."""
    return sorted(PLATES.index[PLATES["batch"] == batch])


def illumination_source(wildcards):
    """Inputs of a plate's illumination job: its manifest, or its batch's estimate."""
    if config["illumination"]["group_by"] == "batch":
        batch = PLATES.loc[wildcards.plate, "batch"]
        folder = f"{RESULTS}/illumination/batches/{batch}"
        return {
            "batch_npz": f"{folder}/{wildcards.channel}.npz",
            "batch_png": f"{folder}/{wildcards.channel}.png",
        }
    return {"manifests": [f"{RESULTS}/manifest/{wildcards.plate}.parquet"]}


def illumination_inputs(plate):
    """Channel name -> flat/dark-field npz of a plate; {} when no correction is configured."""
    if config["illumination"]["method"] == "none":
        return {}
    return {ch: f"{RESULTS}/illumination/{plate}/{ch}.npz" for ch in CHANNEL_NAMES}


def illumination_targets():
    """Final outputs of the illumination stage."""
    if config["illumination"]["method"] == "none":
        return []
    targets = [
        f"{RESULTS}/illumination/{plate}/{ch}.{ext}"
        for plate in PLATES.index
        for ch in CHANNEL_NAMES
        for ext in ("npz", "png")
    ]
    if config["illumination"]["write_corrected"]:
        targets += [
            f"{RESULTS}/illumination/{plate}/corrected" for plate in PLATES.index
        ]
    return targets


# --- segmentation -------------------------------------------------------------------


def segmentation_model():
    """Checkpoint of the deep method (an input, so a new model reruns the jobs), or None."""
    seg = config["segmentation"]
    if seg["method"] != "deep":
        return None
    if seg["model"]:
        return seg["model"]
    from hcsflow.segmentation.segmenter import default_model_path

    # relative to the working directory when the package lives below it (a checkout), so that
    # moving the project folder does not change the jobs' inputs
    path = default_model_path()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# resolved once: segment_inputs() runs for every plate x shard job
SEGMENTATION_MODEL = segmentation_model()


def segmentation_illumination(plate):
    """Illumination profiles {channel: npz} of a plate, {} when correction is off."""
    return dict(illumination_inputs(plate))


def segment_inputs(wildcards):
    inputs = {"manifest": f"{RESULTS}/manifest/{wildcards.plate}.parquet"}
    model = SEGMENTATION_MODEL
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


# --- measurement and embeddings ---------------------------------------------------------

TRAINED_EMBEDDERS = ("weakly_supervised", "self_supervised")


def embedder_source():
    """What the measure jobs embed with: a checkpoint path (an input), a name, or None."""
    emb = config["embedding"]
    if emb["method"] == "none":
        return None
    if emb["method"] in TRAINED_EMBEDDERS:
        return f"{RESULTS}/models/embedder.pt"
    if emb["method"] == "checkpoint":
        return emb["checkpoint"]
    return emb["method"]


def embedding_gpu():
    emb = config["embedding"]
    return 1 if emb["method"] != "none" and emb["device"] == "cuda" else 0


def plate_cell_tables(plate):
    return [f"{RESULTS}/cells/{plate}/{shard}.parquet" for shard in plate_shards(plate)]


def profiles_inputs(wildcards):
    inputs = {"cells": plate_cell_tables(wildcards.plate)}
    if config["profiles"]["projection"]["method"] != "none":
        inputs["units"] = f"{RESULTS}/projection/negcon/{wildcards.plate}.npz"
        inputs["projection"] = f"{RESULTS}/projection/projection.npz"
    return inputs


def measure_inputs(wildcards):
    inputs = {
        "manifest": f"{RESULTS}/manifest/{wildcards.plate}.parquet",
        "masks": f"{RESULTS}/masks/{wildcards.plate}/{wildcards.shard}.npz",
    }
    for channel, path in illumination_inputs(wildcards.plate).items():
        inputs[f"illum_{channel}"] = path
    source = embedder_source()
    if source is not None and Path(source).suffix in (".pt", ".pth", ".ts"):
        inputs["embedder"] = source
    return inputs
