"""Fit BaSiCPy on stacks stored as .npy files; run inside BaSiCPy's own virtual environment.

Usage: python _basicpy_runner.py JOBS.json
JOBS.json is a list of {"stack": path.npy, "darkfield": bool, "out": prefix}; for each job the
flat-field and dark-field are written to ``prefix_flat.npy`` / ``prefix_dark.npy`` and the fit
time (seconds, excluding loading) to ``prefix_time.txt``.
"""

import json
import logging
import sys
import time
import warnings

import numpy as np
import torch

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
logging.disable(logging.WARNING)
warnings.simplefilter("ignore")

from basicpy import BaSiC  # noqa: E402

jobs = json.load(open(sys.argv[1]))
for job in jobs:
    stack = np.load(job["stack"])
    model = BaSiC(get_darkfield=bool(job["darkfield"]), device="cpu")
    t0 = time.perf_counter()
    model.fit(stack)
    dt = time.perf_counter() - t0
    np.save(job["out"] + "_flat.npy", np.asarray(model.flatfield, dtype=np.float32))
    np.save(job["out"] + "_dark.npy", np.asarray(model.darkfield, dtype=np.float32))
    with open(job["out"] + "_time.txt", "w") as fh:
        fh.write(f"{dt:.6f}\n")
    print(f"done {job['out']} {dt:.2f}s", flush=True)
