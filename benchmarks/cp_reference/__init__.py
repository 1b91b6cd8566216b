"""CellProfiler's own measurement code (through ``cp_measure``), renamed to hcsflow's columns.

One module per measurement family; each provides ``reference(image, compartments, n,
channel_names) -> dict[str, ndarray]`` with the same column names and row order as
:func:`hcsflow.features.measure`, so ``benchmarks/features.py`` can compare them column by
column. ``cp_measure`` is a benchmark dependency only (``pip install -e '.[bench]'``).
"""
