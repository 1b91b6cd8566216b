"""Snakemake script: aggregate a plate's per-cell tables into normalized well profiles."""

from hcsflow.io import file_checksum, make_provenance, write_table
from hcsflow.logutil import log_to
from hcsflow.profiling import feature_columns, plate_profiles

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    opts = sm.params.profiles
    cells = list(sm.input.cells)
    prof = plate_profiles(
        cells,
        aggregation=opts["aggregation"],
        normalization=opts["normalization"],
        control_role=opts["control_role"],
        mad_epsilon=opts["mad_epsilon"],
        qc_columns=opts["qc_columns"],
    )
    prov = make_provenance(
        "profiles",
        config={"profiles": opts},
        inputs={p: file_checksum(p) for p in cells},
        extra={
            "steps": [
                f"aggregate({opts['aggregation']} by Metadata_Plate, Metadata_Well)",
                f"normalize({opts['normalization']} against {opts['control_role']} per plate)",
            ]
        },
    )
    write_table(prof, sm.output[0], prov)
    log.info(
        "plate %s: %d wells x %d features from %d cell tables",
        sm.wildcards.plate,
        len(prof),
        len(feature_columns(prof)),
        len(cells),
    )
