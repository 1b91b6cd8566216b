"""Snakemake script: the campaign's projection of single cells, fitted on control cells."""

from hcsflow.logutil import log_to
from hcsflow.profiling import NegconSample, fit_cell_projection

sm = snakemake  # noqa: F821 - provided by Snakemake
with log_to(sm.log[0]) as log:
    proj = sm.params.projection
    samples = [NegconSample.load(p) for p in sm.input.samples]
    model = fit_cell_projection(
        samples, method=proj["method"], n_components=proj["n_components"], seed=proj["seed"]
    )
    model.save(sm.output[0])
    log.info(
        "%s on %d control cells of %d plates: %d components",
        proj["method"],
        model.n_cells,
        len(samples),
        len(model.components),
    )
