"""Snakemake script: a plate's control units and a sample of its control cells."""

from hcsflow.logutil import log_to
from hcsflow.profiling import negcon_sample

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    proj = sm.params.projection
    sample = negcon_sample(
        list(sm.input.cells),
        sm.wildcards.plate,
        control_role=sm.params.control_role,
        max_cells=proj["cells_per_plate"],
        seed=proj["seed"],
        qc_columns=sm.params.qc_columns,
        clip=proj["clip"],
        blocklist=sm.params.blocklist,
    )
    sample.save(sm.output[0])
    log.info(
        "plate %s: %d of %d control cells sampled, %d features",
        sm.wildcards.plate,
        len(sample.sample),
        sample.n_controls,
        len(sample.features),
    )
