"""Time per simulated field (one process) by field size, split into simulation and TIFF writing.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/simulate_speed.py [--reps 3]

CPU time (``time.process_time``) is reported next to wall time because the figures are taken on
a shared 2-core machine, where wall time depends on the other jobs.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import tifffile

from hcsflow.simulate import make_illumination, simulate_field


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 540, 1080])
    args = ap.parse_args()
    print(
        f"{'size':>6} {'cells':>6} {'sim CPU s':>10} {'sim wall s':>11} {'write CPU s':>12} {'MB/field':>9}"
    )
    for size in args.sizes:
        flat, dark = make_illumination((size, size))
        cpu, wall, wcpu, nbytes, cells = [], [], [], [], []
        for rep in range(args.reps):
            t0, w0 = time.process_time(), time.perf_counter()
            f = simulate_field(rep, (size, size), flatfield=flat, darkfield=dark)
            cpu.append(time.process_time() - t0)
            wall.append(time.perf_counter() - w0)
            cells.append(f.info["n_cells"])
            t0 = time.process_time()
            total = 0
            for c in range(f.image.shape[0]):
                buf = io.BytesIO()
                tifffile.imwrite(
                    buf,
                    f.image[c],
                    compression="zlib",
                    predictor=True,
                    compressionargs={"level": 1},
                )
                total += len(buf.getvalue())
            wcpu.append(time.process_time() - t0)
            nbytes.append(total)
        print(
            f"{size:>6} {np.mean(cells):>6.0f} {np.median(cpu):>10.2f} {np.median(wall):>11.2f} "
            f"{np.median(wcpu):>12.2f} {np.mean(nbytes) / 1e6:>9.2f}"
        )


if __name__ == "__main__":
    main()
