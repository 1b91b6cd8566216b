"""The ``hcsflow simulate`` command."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hcsflow.simulate.params import VIGNETTING, batch_appearance
from hcsflow.simulate.plate import simulate_plate
from hcsflow.simulate.truth import truth_cell_table


def add_arguments(parser) -> None:
    """Arguments of ``hcsflow simulate``."""
    parser.add_argument("out_dir", help="output folder (images/, platemap.csv, truth/)")
    parser.add_argument("--plate", default="SIM-P1", help="plate name (default SIM-P1)")
    parser.add_argument("--wells", type=int, choices=(96, 384), default=96, help="plate format")
    parser.add_argument("--sites", type=int, default=4, help="fields per well (default 4)")
    parser.add_argument(
        "--size", type=int, default=1080, help="field side in pixels (default 1080)"
    )
    parser.add_argument(
        "--mpp", type=float, default=0.65, help="micrometres per pixel (default 0.65)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all CPUs)"
    )
    parser.add_argument(
        "--platemap", default=None, help="plate map CSV to use instead of the default design"
    )
    parser.add_argument(
        "--vignetting", choices=VIGNETTING, default="radial", help="flat-field kind"
    )
    parser.add_argument("--no-dark-offset", action="store_true", help="camera without offset")
    parser.add_argument(
        "--density", type=float, default=1.0, help="relative cell density (default 1)"
    )
    parser.add_argument(
        "--out-of-focus-fraction",
        type=float,
        default=0.02,
        help="share of blurred fields (default 0.02)",
    )
    parser.add_argument(
        "--no-plate-effects", action="store_true", help="no row/column/edge effects"
    )
    parser.add_argument(
        "--background-cv",
        type=float,
        default=0.0,
        help="well-to-well CV of the background fluorescence level (default 0)",
    )
    parser.add_argument(
        "--background-jitter",
        type=float,
        default=0.0,
        help="field-to-field CV of the background level within a well (default 0)",
    )
    parser.add_argument(
        "--batch-appearance",
        type=int,
        default=None,
        metavar="SEED",
        help="image the plate as an imaging batch whose staining and camera are drawn from "
        "SEED (hcsflow.simulate.batch_appearance); plates with one SEED share them",
    )
    parser.add_argument(
        "--cell-table",
        action="store_true",
        help="also write truth/cells.parquet (per-cell features measured in the true masks)",
    )


def run(args) -> int:
    """Run ``hcsflow simulate``; a bad argument or plate map raises ``ValueError``."""
    pm = None
    if args.platemap:
        if not Path(args.platemap).exists():
            raise ValueError(f"plate map {args.platemap} does not exist")
        pm = pd.read_csv(args.platemap, dtype={"well": str}, keep_default_na=False)
    res = simulate_plate(
        args.out_dir,
        plate=args.plate,
        n_wells=args.wells,
        sites=args.sites,
        size=args.size,
        image_mpp=args.mpp,
        seed=args.seed,
        platemap=pm,
        vignetting=args.vignetting,
        dark_offset=not args.no_dark_offset,
        density=args.density,
        out_of_focus_fraction=args.out_of_focus_fraction,
        plate_effects=not args.no_plate_effects,
        background_cv=args.background_cv,
        background_jitter=args.background_jitter,
        appearance=(
            None
            if args.batch_appearance is None
            else batch_appearance(np.random.default_rng(args.batch_appearance))
        ),
        n_workers=args.workers,
    )
    if args.cell_table:
        from hcsflow.io import make_provenance, write_table

        t0 = time.perf_counter()
        df = truth_cell_table(res.out_dir, n_workers=args.workers or os.cpu_count() or 1)
        write_table(
            df,
            res.truth_dir / "cells.parquet",
            make_provenance("simulate-truth", config=vars(args)),
        )
        print(f"truth cell table: {len(df)} cells in {time.perf_counter() - t0:.1f} s")
    return 0
