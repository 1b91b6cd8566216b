# Configuration validation, plate sheet reading and helpers shared by every stage.
# Every check runs here, at parse time, so a bad configuration stops the run before any job.
import re
import sys
from pathlib import Path

from hcsflow.config import ConfigError, load_workflow_config

try:
    WF = load_workflow_config(
        config, schema=Path(workflow.basedir) / "config" / "config.schema.yaml"
    )
except ConfigError as err:
    sys.exit(f"hcsflow: the configuration cannot be used:\n{err}")

config.update(WF.config)
RESULTS = WF.results
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PLATES = WF.plates
CHANNELS = WF.channels
CHANNEL_NAMES = [ch["name"] for ch in CHANNELS]


wildcard_constraints:
    plate="|".join(map(re.escape, PLATES.index)) if len(PLATES) else "[^/]+",
    shard=r"\d{3}",
    channel="|".join(CHANNEL_NAMES),


def all_targets():
    """Final outputs of every stage (the inputs of rule all)."""
    targets = expand(f"{RESULTS}/manifest/{{plate}}.parquet", plate=PLATES.index)
    return targets


def plate_row(plate):
    """The plate sheet row of a plate (images, layout, platemap, batch)."""
    return PLATES.loc[plate]


def plate_shards(plate):
    """Shard ids of a plate (groups of wells from its plate map, in plate order)."""
    return list(WF.shards[plate])


def shard_wells(plate, shard):
    """Wells of one shard of a plate."""
    return WF.shards[plate][shard]
