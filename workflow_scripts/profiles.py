"""Snakemake script: aggregate a plate's per-cell tables into normalized well profiles."""

from hcsflow.io import file_checksum, make_provenance, write_table
from hcsflow.logutil import log_to
from hcsflow.profiling import CellProjection, NegconSample, feature_columns, plate_profiles

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    opts = sm.params.profiles
    cells = list(sm.input.cells)
    method = opts["projection"]["method"]
    projection, inputs, steps = None, list(cells), []
    if method != "none":
        projection = (NegconSample.load(sm.input.units), CellProjection.load(sm.input.projection))
        inputs += [sm.input.units, sm.input.projection]
        steps.append(
            f"project cells ({method}, {len(projection[1].components)} components of the "
            f"campaign's {opts['control_role']} cells)"
        )
    steps.append(f"aggregate({opts['aggregation']} by Metadata_Plate, Metadata_Well)")
    if opts["dispersion"]:
        steps.append(
            f"dispersion({', '.join(opts['dispersion'])} by Metadata_Plate, Metadata_Well)"
        )
    steps.append(f"normalize({opts['normalization']} against {opts['control_role']} per plate)")
    prof = plate_profiles(
        cells,
        aggregation=opts["aggregation"],
        normalization=opts["normalization"],
        control_role=opts["control_role"],
        mad_epsilon=opts["mad_epsilon"],
        qc_columns=opts["qc_columns"],
        threads=sm.threads,
        dispersion=opts["dispersion"],
        projection=projection,
        clip=opts["projection"]["clip"],
    )
    prov = make_provenance(
        "profiles",
        config={"profiles": opts},
        inputs={p: file_checksum(p) for p in inputs},
        extra={"steps": steps},
    )
    write_table(prof, sm.output[0], prov)
    log.info(
        "plate %s: %d wells x %d features from %d cell tables",
        sm.wildcards.plate,
        len(prof),
        len(feature_columns(prof)),
        len(cells),
    )
