"""Snakemake script: campaign-level feature selection, batch correction and consensus."""

import pandas as pd

from hcsflow.io import file_checksum, make_provenance, read_table, write_table
from hcsflow.logutil import log_to
from hcsflow.profiling import campaign_profiles, normalize_plates, read_profiles_table

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    p = sm.params
    paths = list(sm.input.profiles)
    if p.input_profiles:
        profiles = read_profiles_table(paths[0], columns=p.input_profiles_columns)
        profiles = normalize_plates(
            profiles,
            p.profiles["normalization"],
            p.profiles["control_role"],
            p.profiles["mad_epsilon"],
        )
        source = [f"input_profiles({p.input_profiles})"]
        source.append(
            f"normalize({p.profiles['normalization']} against "
            f"{p.profiles['control_role']} per plate)"
        )
    else:
        profiles = pd.concat([read_table(path) for path in paths], ignore_index=True)
        source = [
            f"aggregate({p.profiles['aggregation']} by Metadata_Plate, Metadata_Well)",
            f"normalize({p.profiles['normalization']} against "
            f"{p.profiles['control_role']} per plate)",
        ]
    out, cons, info = campaign_profiles(profiles, p.campaign, p.profiles["control_role"])
    info["steps"] = source + info["steps"]
    cfg = {
        "campaign": p.campaign,
        "profiles": p.profiles,
        "input_profiles": p.input_profiles,
        "input_profiles_columns": p.input_profiles_columns,
    }
    inputs = {path: file_checksum(path) for path in paths}
    write_table(out, sm.output.profiles, make_provenance("campaign", cfg, inputs, info))
    write_table(cons, sm.output.consensus, make_provenance("consensus", cfg, inputs, info))
    for op, feats in info["excluded_features"].items():
        log.info("feature selection %s: %d features dropped", op, len(feats))
    log.info(
        "campaign: %d wells, %d -> %d features, %d consensus profiles; steps: %s",
        len(out),
        info["n_features_in"],
        info["n_features_out"],
        len(cons),
        " -> ".join(info["steps"]),
    )
