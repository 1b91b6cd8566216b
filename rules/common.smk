# Configuration validation, plate sheet reading and helpers shared by every stage.
# All checks run here, at parse time, so a bad configuration stops the run before any job.
import sys
from pathlib import Path

from hcsflow.config import ConfigError, load_workflow_config


try:
    WF = load_workflow_config(
        config, schema=Path(workflow.basedir) / "config" / "config.schema.yaml"
    )
except ConfigError as err:
    sys.exit(f"hcsflow: configuration error\n{err}")

config.update(WF.config)
RESULTS = WF.results
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PLATES = WF.plates
CHANNELS = WF.channels
CHANNEL_NAMES = [ch["name"] for ch in CHANNELS]

# Each stage registers a function returning its final targets; rule all collects them.
_TARGET_FUNCS = []


def register_targets(func):
    _TARGET_FUNCS.append(func)
    return func


def all_targets():
    return [t for func in _TARGET_FUNCS for t in func()]


def plate_row(plate):
    return PLATES.loc[plate]
