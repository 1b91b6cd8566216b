"""hcsflow: raw high-content-screening plates to morphological profiles and clusters.

The package is the library behind the Snakemake workflow. Each stage is a pure function that a
notebook can call without Snakemake: :mod:`hcsflow.io`, :mod:`hcsflow.discover`,
:mod:`hcsflow.simulate`, :mod:`hcsflow.illumination`, :mod:`hcsflow.segmentation`,
:mod:`hcsflow.profiling`, :mod:`hcsflow.analysis`; well names in :mod:`hcsflow.wells`.
"""

__version__ = "0.1.0"
