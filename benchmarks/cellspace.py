"""Cost of the per-cell profile options: dispersion features and the cell projection.

Prints two markdown tables (CPU seconds of this process, one thread unless OMP_NUM_THREADS
says otherwise, and for the projection the peak resident memory so far, samples included):

- ``fit_cell_projection`` (``pca`` and ``fa``, 50 components) on seeded control samples of
  ``--plates`` plates x 5,000 cells x 1,900 features with 30 latent factors;
- ``aggregate_files`` on one seeded shard (default 40,000 cells x 1,900 float32 features in 24
  wells) with ``profiles.dispersion`` none, ``mad`` and ``mad, q10, q90``.

Run from the repository root::

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/cellspace.py
    python benchmarks/cellspace.py --cells 5000 --features 200 --plates 2   # quick check
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _tables import markdown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcsflow import profiling as P  # noqa: E402
from hcsflow.profiling import cellspace as C  # noqa: E402


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def dispersion_rows(cells: int, features: int, wells: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(cells, features)).astype(np.float32)
    df = pd.DataFrame(x, columns=[f"Cells_F{i:04d}" for i in range(features)])
    df.insert(0, "Metadata_Plate", "P")
    df.insert(1, "Metadata_Well", np.sort(rng.integers(0, wells, cells)).astype(str))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.parquet"
        df.to_parquet(path)
        P.aggregate_files([path], dispersion=["mad"])  # compile the kernels once
        for stats in ([], ["mad"], ["mad", "q10", "q90"]):
            t = time.process_time()
            P.aggregate_files([path], dispersion=stats)
            rows.append(
                {
                    "shard": f"{cells:,} cells x {features:,} features, {wells} wells",
                    "dispersion": ", ".join(stats) or "none (medians)",
                    "CPU s": f"{time.process_time() - t:.2f}",
                }
            )
    return rows


def projection_rows(plates: int, features: int, per_plate: int) -> list[dict]:
    rng = np.random.default_rng(1)
    loadings = rng.normal(size=(30, features))
    names = tuple(f"F{j}" for j in range(features))
    samples = []
    for i in range(plates):
        z = rng.normal(size=(per_plate, 30)) @ loadings + rng.normal(size=(per_plate, features))
        one = np.ones(features)
        samples.append(
            C.NegconSample(f"P{i}", names, one * 0, one, z.astype(np.float32), per_plate)
        )
    rows = []
    for method in ("pca", "fa"):
        t = time.process_time()
        model = C.fit_cell_projection(samples, method, n_components=50)
        rows.append(
            {
                "control cells": f"{plates} plates x {per_plate:,} cells x {features:,} features",
                "method": method,
                "components": str(len(model.components)),
                "CPU s": f"{time.process_time() - t:.1f}",
                "peak RSS so far": f"{peak_mb():,} MB",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", type=int, default=40_000, help="cells of the shard")
    ap.add_argument("--features", type=int, default=1_900)
    ap.add_argument("--wells", type=int, default=24)
    ap.add_argument("--plates", type=int, default=4, help="plates of control samples")
    ap.add_argument("--per-plate", type=int, default=5_000, help="control cells per plate")
    args = ap.parse_args()
    # the projection first, so that its peak memory is not the shard's
    print(markdown(projection_rows(args.plates, args.features, args.per_plate)), flush=True)
    print()
    print(markdown(dispersion_rows(args.cells, args.features, args.wells)))


if __name__ == "__main__":
    main()
