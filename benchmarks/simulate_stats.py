"""Measured statistics of a simulated plate (the numbers quoted in docs/simulator.md).

Simulates a plate (or reads an existing one), then prints tables of: cells per field,
nucleus and cell diameters, confluence and touching-cell fraction, mitotic/apoptotic/debris
counts, per-channel signal-to-noise ratio, time per field and per plate, and how far each MoA
moves the features it is meant to move (well medians, z-scores against DMSO wells).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/simulate_stats.py --size 540 --sites 4 --workers 2
    PYTHONPATH=. python benchmarks/simulate_stats.py --plate-dir /tmp/simplate   # reuse a plate

With ``--speed`` it prints instead the time per simulated field (one process) by field size,
split into simulation and TIFF writing:

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/simulate_stats.py --speed [--reps 3]

CPU time (``time.process_time``) is reported next to wall time because the figures are taken on
a shared 2-core machine, where wall time depends on the other jobs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi

from hcsflow.simulate import (
    CHANNELS,
    MOA_PROFILES,
    make_illumination,
    simulate_field,
    simulate_plate,
    truth_cell_table,
)

#: compartment whose stain defines each channel's signal
SIGNAL_MASK = {"DNA": "nuclei", "ER": "cyto", "RNA": "cells", "AGP": "cells", "Mito": "cyto"}


def snr_table(plate_dir: Path, plate: str, n_fields: int = 24) -> pd.DataFrame:
    """Per channel: (mean signal in its compartment - background) / background noise std.

    Measured on raw images minus the true dark-field (the flat-field is close to 1 in the
    centre, where most of the signal lies); background = pixels at least 10 px from any cell,
    noise = robust std (1.4826 MAD) of the background after removing its smooth trend.
    """
    fields = pd.read_csv(plate_dir / "truth" / "fields.csv")
    fields = fields[(fields["n_cells"] > 0) & (~fields["out_of_focus"])].head(n_fields)
    ill = np.load(plate_dir / "truth" / "illumination.npz")
    rows = []
    for r in fields.itertuples():
        m = np.load(plate_dir / "truth" / "masks" / f"{r.well}_s{r.site}.npz")
        nuc, cells = m["nuclei"] > 0, m["cells"] > 0
        masks = {"nuclei": nuc, "cells": cells, "cyto": cells & ~nuc}
        bg = ndi.binary_erosion(~cells, iterations=10)
        if bg.sum() < 500:
            continue
        for c, ch in enumerate(CHANNELS):
            raw = tifffile.imread(plate_dir / "images" / f"{plate}_{r.well}_s{r.site}_w{c + 1}.tif")
            img = (raw.astype(np.float32) - ill["darkfield"][c]) / ill["flatfield"][c]
            trend = ndi.median_filter(img, 9)
            resid = (img - trend)[bg]
            noise = 1.4826 * np.median(np.abs(resid - np.median(resid)))
            b = float(np.median(img[bg]))
            s = float(img[masks[SIGNAL_MASK[ch]]].mean())
            rows.append({"channel": ch, "signal": s - b, "background": b, "noise": noise})
    df = pd.DataFrame(rows).groupby("channel", sort=False).median()
    df["snr"] = df["signal"] / df["noise"]
    df["signal_to_background"] = (df["signal"] + df["background"]) / df["background"]
    return df.round(2)


def moa_table(cells: pd.DataFrame, plate_dir: Path) -> pd.DataFrame:
    """Per MoA: z-score of its features (well medians vs DMSO wells) at each effect bin."""
    feats = sorted({f for p in MOA_PROFILES.values() for f in p["features"].split(";")})
    feats = [f for f in feats if f in cells.columns or f == "Count_Cells"]
    wells = cells.groupby("Metadata_Well")[[f for f in feats if f != "Count_Cells"]].median()
    wells["Count_Cells"] = cells.groupby("Metadata_Well").size()
    pm = pd.read_csv(plate_dir / "platemap.csv", keep_default_na=False).set_index("well")
    wells = wells.join(pm)
    neg = wells[wells["role"] == "negcon"]
    mu, sd = neg[feats].mean(), neg[feats].std()
    z = (wells[feats] - mu) / sd
    treat = pd.read_csv(plate_dir / "truth" / "treatments.csv", keep_default_na=False)
    eff = treat.set_index(["compound", "dose_um"])["effect_fraction"]
    wells["effect_fraction"] = [
        eff.get((c, d), 0.0) for c, d in zip(wells["compound"], wells["dose_um"], strict=True)
    ]
    rows = []
    for moa, prof in list(MOA_PROFILES.items()) + [("inactive", {"features": ""})]:
        sub = wells[wells["moa"] == moa]
        fs = prof["features"].split(";") if prof["features"] else feats
        for lo, hi in ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.01)):
            w = sub[(sub["effect_fraction"] >= lo) & (sub["effect_fraction"] < hi)]
            if len(w) == 0:
                continue
            zz = z.loc[w.index, fs].abs()
            rows.append(
                {
                    "moa": moa,
                    "effect_fraction": f"[{lo:.2f}, {min(hi, 1):.2f})",
                    "wells": len(w),
                    "max_abs_z_own_features": round(float(zz.max(axis=1).median()), 2),
                    "features": ";".join(fs) if moa != "inactive" else "(all)",
                }
            )
    return pd.DataFrame(rows)


def speed_table(sizes: list[int], reps: int) -> None:
    """Print the time per simulated field by size: simulation and TIFF writing (CPU, wall)."""
    print(
        f"{'size':>6} {'cells':>6} {'sim CPU s':>10} {'sim wall s':>11} {'write CPU s':>12} {'MB/field':>9}"
    )
    for size in sizes:
        flat, dark = make_illumination((size, size))
        cpu, wall, wcpu, nbytes, cells = [], [], [], [], []
        for rep in range(reps):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plate-dir", type=Path, default=None, help="existing simulated plate")
    ap.add_argument("--wells", type=int, default=96)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--size", type=int, default=540)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--speed", action="store_true", help="time single fields by size instead of a plate"
    )
    ap.add_argument("--reps", type=int, default=3, help="--speed: fields per size")
    ap.add_argument(
        "--speed-sizes", type=int, nargs="+", default=[256, 540, 1080], help="--speed: sizes"
    )
    args = ap.parse_args()
    if args.speed:
        speed_table(args.speed_sizes, args.reps)
        return

    tmp = None
    if args.plate_dir is None:
        tmp = tempfile.TemporaryDirectory()
        plate_dir = Path(tmp.name)
        t0 = time.perf_counter()
        simulate_plate(
            plate_dir,
            n_wells=args.wells,
            sites=args.sites,
            size=args.size,
            seed=args.seed,
            n_workers=args.workers,
        )
        print(f"plate time: {time.perf_counter() - t0:.1f} s with {args.workers} workers")
    else:
        plate_dir = args.plate_dir
    sim = json.loads((plate_dir / "truth" / "simulation.json").read_text())
    mpp = sim["image_mpp"]
    fields = pd.read_csv(plate_dir / "truth" / "fields.csv", keep_default_na=False)
    pm = pd.read_csv(plate_dir / "platemap.csv", keep_default_na=False)
    fields = fields.merge(pm[["well", "role"]], on="well")
    occ = fields[fields["role"] != "empty"]
    print(
        f"\nplate {sim['plate']}: {sim['n_wells']} wells x {sim['sites']} sites, {sim['size']} px at {mpp} um/px"
    )
    desc = occ[
        [
            "n_cells",
            "confluence",
            "touching_fraction",
            "n_mitotic",
            "n_apoptotic",
            "n_debris",
            "mean_nucleus_diameter_um",
            "mean_cell_diameter_um",
        ]
    ].describe(percentiles=[0.05, 0.5, 0.95])
    print("\nper-field statistics (all non-empty fields)")
    print(desc.loc[["mean", "5%", "50%", "95%"]].T.round(3).to_string())
    dmso = occ[occ["role"] == "negcon"]
    print(
        f"\nDMSO fields: {dmso['n_cells'].mean():.1f} cells per field, mitotic "
        f"{dmso['n_mitotic'].sum() / dmso['n_cells'].sum():.3f}, apoptotic "
        f"{dmso['n_apoptotic'].sum() / dmso['n_cells'].sum():.3f}; out-of-focus fields: "
        f"{int(fields['out_of_focus'].sum())}/{len(fields)}"
    )
    t0 = time.perf_counter()
    cells = truth_cell_table(plate_dir, n_workers=args.workers)
    print(f"\ntruth cell table: {len(cells)} cells in {time.perf_counter() - t0:.1f} s")
    d_n = 2 * np.sqrt(cells["Nuclei_AreaShape_Area"] / np.pi) * mpp
    d_c = 2 * np.sqrt(cells["Cells_AreaShape_Area"] / np.pi) * mpp
    print(
        "equivalent diameters (um), 5/50/95 %: nuclei "
        f"{np.percentile(d_n, 5):.1f}/{np.median(d_n):.1f}/{np.percentile(d_n, 95):.1f}, cells "
        f"{np.percentile(d_c, 5):.1f}/{np.median(d_c):.1f}/{np.percentile(d_c, 95):.1f}"
    )
    print("\nsignal-to-noise per channel (raw - dark, background 10 px from cells)")
    print(snr_table(plate_dir, sim["plate"]).to_string())
    print(
        "\nMoA effects: median over wells of max |z| of the MoA's features (well medians vs DMSO)"
    )
    print(moa_table(cells, plate_dir).to_string(index=False))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
