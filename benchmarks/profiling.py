"""Profiling speed and memory: hcsflow.profiling against pycytominer on the same table.

Builds a seeded single-cell table (default 1,000,000 cells x 500 features over 4 plates of 384
wells), written as per-shard Parquet files (24 wells per shard, as the workflow writes them),
then runs each operation with pycytominer and with hcsflow, each in its own subprocess so that
peak memory (maximum resident set size) is measured per run, and prints the table side by side.

Rows
----
aggregate, normalize, feature_select
    One operation on the whole single-cell table held in memory (both tools get the same
    DataFrame; reading it is not timed): median per well; mad_robustize per plate against the
    negcon cells; feature selection (drop_na_columns, variance_threshold,
    correlation_threshold, blocklist, the fast order for pycytominer, and optionally
    pycytominer's default order with ``--default-order``).
chain
    The workflow's path from the shard files to feature-selected well profiles, reading
    included: aggregate cells to wells, normalize per plate against negcon wells, feature
    selection. pycytominer reads the whole table and runs its functions; hcsflow streams one
    shard file at a time (``aggregate_files``) and works on well profiles afterwards.

Numbers are compared where the methods are the same (max abs difference over all values; the
set of selected features). pycytominer is installed into its own virtual environment
``benchmarks/.venv-pycytominer`` (created on first use, git-ignored).

    nice -n 10 python benchmarks/profiling.py                     # full size
    python benchmarks/profiling.py --cells 100000 --features 200  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "benchmarks" / ".venv-pycytominer"
PYCYTOMINER = "pycytominer==1.7.1"
STRATA = ["Metadata_Plate", "Metadata_Well"]
BEST_ORDER = ["drop_na_columns", "variance_threshold", "correlation_threshold", "blocklist"]
DEFAULT_ORDER = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
# the same operations under our names
OURS = {
    "drop_na_columns": "na",
    "variance_threshold": "variance",
    "correlation_threshold": "correlation",
    "blocklist": "blocklist",
}


# ---------------------------------------------------------------------------------- the data


def feature_names(n: int) -> list[str]:
    """CellProfiler-style names; the first 10 are in pycytominer's default blocklist (and
    match hcsflow's default blocklist patterns)."""
    blocked = [
        f"Nuclei_Correlation_{k}_{a}_{b}"
        for k in ("Manders", "RWC")
        for a, b in (("AGP", "DNA"), ("DNA", "ER"), ("ER", "Mito"), ("Mito", "RNA"), ("RNA", "AGP"))
    ]
    comps = ("Cells", "Nuclei", "Cytoplasm")
    mods = ("Intensity_MeanIntensity", "Texture_Contrast", "AreaShape_Zernike", "Granularity")
    chans = ("DNA", "ER", "RNA", "AGP", "Mito")
    out = list(blocked[: min(10, n)])
    i = 0
    while len(out) < n:
        out.append(f"{comps[i % 3]}_{mods[(i // 3) % 4]}_{i:04d}_{chans[i % 5]}")
        i += 1
    return out


def make_table(args: argparse.Namespace, work: Path) -> dict:
    """Write the per-shard Parquet files (seeded); return a description."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hcsflow.io import parquet_write_options

    rng = np.random.default_rng(args.seed)
    n_feat = args.features
    names = feature_names(n_feat)
    rows = [chr(ord("A") + r) for r in range(16)]
    wells = [f"{r}{c:02d}" for r in rows for c in range(1, 25)][: args.wells]
    per_well = args.cells / (args.plates * len(wells))
    # latent structure: 30 factors, so that groups of features correlate (some above 0.9)
    n_lat = 30
    load = rng.normal(size=(n_lat, n_feat))
    sparse = rng.random((n_lat, n_feat)) < 0.15
    load *= sparse
    noise = rng.uniform(0.05, 1.0, n_feat)
    noise[rng.choice(n_feat, n_feat // 10, replace=False)] = 0.02  # near-duplicates
    offset = rng.normal(10, 3, n_feat)
    n_cpd = 40
    cpd_effect = rng.normal(size=(n_cpd, n_lat)) * (rng.random((n_cpd, 1)) < 0.5)
    nan_cols = rng.choice(np.arange(10, n_feat), 5, replace=False)  # 20 % missing
    const_col = 10  # nearly constant: removed by the variance threshold
    files = []
    total = 0
    for p in range(args.plates):
        plate = f"PLATE{p + 1}"
        plate_shift = rng.normal(size=n_feat) * 0.3
        for s0 in range(0, len(wells), 24):
            shard_wells = wells[s0 : s0 + 24]
            counts = np.maximum(1, rng.poisson(per_well, len(shard_wells)))
            w_idx = np.repeat(np.arange(s0, s0 + len(shard_wells)), counts)
            n = int(counts.sum())
            negcon = w_idx % 16 == 0
            cpd = np.where(negcon, -1, w_idx % n_cpd)
            lat = rng.normal(size=(n, n_lat))
            lat[~negcon] += cpd_effect[cpd[~negcon]]
            x = lat @ load
            x += rng.normal(size=(n, n_feat)) * noise
            x += offset + plate_shift
            x[:, const_col] = 1.0
            x[rng.random(n) < 0.001, const_col] = 1.0 + 1e-4
            for c in nan_cols:
                x[rng.random(n) < 0.2, c] = np.nan
            cols = {
                "Metadata_Plate": np.full(n, plate),
                "Metadata_Well": np.asarray(wells)[w_idx],
                "Metadata_Site": rng.integers(1, 10, n),
                "Metadata_ObjectNumber": np.arange(1, n + 1),
                "Metadata_Role": np.where(negcon, "negcon", "trt"),
                "Metadata_Compound": np.where(
                    negcon, "DMSO", np.char.add("CPD", np.char.zfill(cpd.astype(str), 3))
                ),
            }
            arrays = [pa.array(v) for v in cols.values()]
            xs = x.astype(args.dtype, copy=False)
            arrays += [pa.array(xs[:, j], from_pandas=True) for j in range(n_feat)]
            table = pa.Table.from_arrays(arrays, names=list(cols) + names)
            total += n
            out = work / "cells" / plate / f"{s0 // 24:03d}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            # encoded as hcsflow writes its per-cell tables (hcsflow.io.write_table)
            pq.write_table(table, out, **parquet_write_options(table.schema))
            files.append(str(out))
            del x, xs, lat, table, arrays
    desc = {
        "cells": total,
        "features": n_feat,
        "plates": args.plates,
        "wells": args.plates * len(wells),
        "files": files,
        "dtype": args.dtype,
        "features_list": names,
    }
    (work / "table.json").write_text(json.dumps(desc))
    return desc


# ----------------------------------------------------------------------------- the workers


def _load(files: list[str]):
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _sample(df, every: int = 97):
    """Every ``every``-th row (for comparing large outputs without writing them whole)."""
    return df.iloc[::every].reset_index(drop=True)


def worker(tool: str, op: str, work: Path, order: str, threads: int = 1) -> None:
    desc = json.loads((work / "table.json").read_text())
    files, feats = desc["files"], desc["features_list"]
    out_path = work / f"out_{tool}_{op}_{order}.parquet"
    timing: dict[str, float] = {}
    if tool == "pycytominer":
        import pandas as pd
        from pycytominer import aggregate, feature_select, normalize

        ops = BEST_ORDER if order == "best" else DEFAULT_ORDER

        def pc_normalize(df):
            parts = []
            for _, grp in df.groupby("Metadata_Plate", sort=True):
                parts.append(
                    normalize(
                        grp,
                        features=feats,
                        meta_features=[c for c in df.columns if c.startswith("Metadata_")],
                        method="mad_robustize",
                        samples="Metadata_Role == 'negcon'",
                    )
                )
            return pd.concat(parts)

        if op == "chain":
            t0 = time.perf_counter()
            c0 = time.process_time()
            df = _load(files)
            prof = aggregate(df, strata=STRATA, features=feats, operation="median")
            del df
            meta = _load_well_meta(files)
            prof = meta.merge(prof, on=STRATA, how="right")
            prof = pc_normalize(prof)
            prof = feature_select(prof, features=feats, operation=ops)
            timing["op"] = time.perf_counter() - t0
            timing["cpu"] = time.process_time() - c0
            result = prof
        else:
            df = _load(files)
            t0 = time.perf_counter()
            c0 = time.process_time()
            if op == "aggregate":
                result = aggregate(df, strata=STRATA, features=feats, operation="median")
            elif op == "normalize":
                result = _sample(pc_normalize(df))
            else:
                sel = feature_select(df, features=feats, operation=ops)
                result = pd.DataFrame({"kept": [c for c in sel.columns if c in set(feats)]})
            timing["op"] = time.perf_counter() - t0
            timing["cpu"] = time.process_time() - c0
    else:
        import pandas as pd

        from hcsflow import profiling as P

        # compile (or load from numba's cache) the median kernel before timing, for writable
        # arrays and for read-only ones (Arrow buffers), each a signature of its own
        from hcsflow.profiling._groupstats import group_median_columns

        P.aggregate(
            pd.DataFrame(
                {"Metadata_Plate": ["p"] * 3, "Metadata_Well": ["A01"] * 3, "F": [1.0, 2, 3]}
            )
        )
        warm = np.arange(300.0)
        warm.flags.writeable = False
        group_median_columns([warm], np.arange(300), np.array([0, 300]))
        ops = [OURS[o] for o in (BEST_ORDER if order == "best" else DEFAULT_ORDER)]
        fs_kw = {"operations": ops, "features": feats}
        control = {"Metadata_Role": "negcon"}
        if op == "breakdown":
            # the chain step by step, CPU seconds of this process (all its threads) and wall
            import pyarrow.parquet as pq

            plates = sorted({Path(f).parent.name for f in files})
            steps: dict[str, list[float]] = {}

            def clock(name, fn, *a, **kw):
                c0, w0 = time.process_time(), time.perf_counter()
                out = fn(*a, **kw)
                prev = steps.setdefault(name, [0.0, 0.0])
                prev[0] += time.process_time() - c0
                prev[1] += time.perf_counter() - w0
                return out

            parts = []
            for plate in plates:
                shard_files = [f for f in files if Path(f).parent.name == plate]
                prof = clock("aggregate_files (read + median)", P.aggregate_files, shard_files)
                parts.append(clock("normalize", P.normalize, prof, control=control))
            prof = pd.concat(parts, ignore_index=True)
            result = clock("feature_select", P.feature_select, prof, **fs_kw)
            for f in files:  # after the chain, so that both find the files equally cached
                clock("of which: parquet read", pq.read_table, f)
            print(json.dumps({"steps": steps}))
            return
        if op == "chain":
            t0 = time.perf_counter()
            c0 = time.process_time()
            plates = sorted({Path(f).parent.name for f in files})
            parts = []
            for plate in plates:
                shard_files = [f for f in files if Path(f).parent.name == plate]
                prof = P.aggregate_files(shard_files, threads=threads)
                parts.append(P.normalize(prof, control=control))
            prof = pd.concat(parts, ignore_index=True)
            result = P.feature_select(prof, **fs_kw)
            timing["op"] = time.perf_counter() - t0
            timing["cpu"] = time.process_time() - c0
        else:
            df = _load(files)
            t0 = time.perf_counter()
            c0 = time.process_time()
            if op == "aggregate":
                result = P.aggregate(df, features=feats)
            elif op == "normalize":
                result = _sample(P.normalize(df, control=control, features=feats))
            else:
                excluded = P.feature_select_excluded(df, **fs_kw)
                drop = {f for v in excluded.values() for f in v}
                result = pd.DataFrame({"kept": [f for f in feats if f not in drop]})
            timing["op"] = time.perf_counter() - t0
            timing["cpu"] = time.process_time() - c0
    result.reset_index(drop=True).to_parquet(out_path)
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": timing["op"],
                "cpu": timing["cpu"],
                "peak_mb": peak_mb,
                "output": str(out_path),
            }
        )
    )


def _load_well_meta(files: list[str]):
    """Per-well metadata (role, compound) for pycytominer's well profiles."""
    import pandas as pd

    cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Role", "Metadata_Compound"]
    parts = [pd.read_parquet(f, columns=cols).drop_duplicates(STRATA) for f in files]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------- driver


def ensure_pycytominer() -> Path | None:
    py = VENV / "bin" / "python"
    if py.exists():
        check = subprocess.run([py, "-c", "import pycytominer"], capture_output=True)
        if check.returncode == 0:
            return py
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [py, "-m", "pip", "install", "-q", PYCYTOMINER, "pyarrow"],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"pycytominer could not be installed: {exc.stderr or exc}", file=sys.stderr)
        return None
    return py


def run_worker(python: Path, tool: str, op: str, work: Path, order: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [str(python), __file__, "--worker", tool, op, "--work", str(work), "--order", order]
    cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    return res


def compare(op: str, ours: dict, theirs: dict, feats: list[str]) -> str:
    import pandas as pd

    if "output" not in ours or "output" not in theirs:
        return "-"
    a = pd.read_parquet(ours["output"])
    b = pd.read_parquet(theirs["output"])
    if op == "feature_select":
        same = a["kept"].tolist() == [f for f in feats if f in set(b["kept"])]
        return f"same {len(a)} features" if same else f"DIFFERENT ({len(a)} vs {len(b)})"
    common = [f for f in feats if f in a.columns and f in b.columns]
    if op == "chain":
        kept_same = [f for f in feats if f in a.columns] == [f for f in feats if f in b.columns]
        a = a.sort_values(STRATA).reset_index(drop=True)
        b = b.sort_values(STRATA).reset_index(drop=True)
        note = f", {len(common)} features, " + ("same selection" if kept_same else "DIFFERENT")
    else:
        note = ""
    x, y = a[common].to_numpy(float), b[common].to_numpy(float)
    if x.shape != y.shape:
        return f"shape differs {x.shape} vs {y.shape}"
    nan_same = np.array_equal(np.isnan(x), np.isnan(y))
    diff = np.nanmax(np.abs(x - y)) if x.size else 0.0
    return f"max|diff| {diff:.1e}" + ("" if nan_same else " (NaN differ)") + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=500)
    ap.add_argument("--plates", type=int, default=4)
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads per run")
    ap.add_argument(
        "--chain-threads",
        type=int,
        default=0,
        help="also run hcsflow's chain with this many threads (median kernel and BLAS)",
    )
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "profiling")
    ap.add_argument("--ops", default="aggregate,normalize,feature_select,chain")
    ap.add_argument(
        "--default-order",
        action="store_true",
        help="also time feature_select in pycytominer's default operation order (slow)",
    )
    ap.add_argument("--skip-pycytominer", action="store_true")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each step this many times, tools interleaved, and keep each tool's fastest run",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time hcsflow's chain step by step (CPU and wall seconds)",
    )
    ap.add_argument("--reuse", action="store_true", help="reuse the table in --work if present")
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "OP"), help=argparse.SUPPRESS)
    ap.add_argument("--order", default="best", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.work, args.order, args.threads)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    meta = args.work / "table.json"
    t0 = time.perf_counter()
    if args.reuse and meta.exists():
        desc = json.loads(meta.read_text())
    else:
        desc = make_table(args, args.work)
    print(
        f"table: {desc['cells']:,} cells x {desc['features']} features ({desc['dtype']}), "
        f"{desc['plates']} plates, {desc['wells']} wells, {len(desc['files'])} shard files "
        f"(built in {time.perf_counter() - t0:.0f} s); threads per run: {args.threads}"
    )
    pyc = None if args.skip_pycytominer else ensure_pycytominer()
    if pyc is None and not args.skip_pycytominer:
        print("pycytominer unavailable: only hcsflow is timed")
    jobs = []
    for op in [o for o in args.ops.split(",") if o]:
        jobs.append((op, "best"))
        if op == "feature_select" and args.default_order:
            jobs.append((op, "default"))
    rows = []
    if args.breakdown:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "hcsflow",
            "breakdown",
            "--work",
            str(args.work),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            steps = json.loads(proc.stdout.strip().splitlines()[-1])["steps"]
            print(f"\nhcsflow chain by step ({args.threads} thread(s)):")
            print(f"{'step':<34} {'CPU s':>7} {'wall s':>7}")
            for name, (cpu, wall) in steps.items():
                print(f"{name:<34} {cpu:7.1f} {wall:7.1f}")
        else:
            print("breakdown failed:", proc.stderr.strip().splitlines()[-1:])

    def best(runs: list[dict]) -> dict:
        """The fastest of repeated runs (the one least disturbed by other load)."""
        ok = [r for r in runs if "seconds" in r]
        return min(ok, key=lambda r: r["seconds"]) if ok else (runs[0] if runs else {})

    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for op, order in jobs:
        ours_runs, theirs_runs, ours_t_runs = [], [], []
        for _ in range(args.repeat):  # interleaved, so that both see the same load
            ours_runs.append(
                run_worker(Path(sys.executable), "hcsflow", op, args.work, order, args.threads)
            )
            if pyc:
                theirs_runs.append(
                    run_worker(pyc, "pycytominer", op, args.work, order, args.threads)
                )
            if op == "chain" and args.chain_threads > 1:
                ours_t_runs.append(
                    run_worker(
                        Path(sys.executable), "hcsflow", op, args.work, order, args.chain_threads
                    )
                )
        ours, theirs = best(ours_runs), best(theirs_runs)
        label = op if op != "feature_select" else f"feature_select ({order} order)"
        rows.append((label, theirs, ours, compare(op, ours, theirs, desc["features_list"])))
        print(f"  done: {label}", flush=True)
        if ours_t_runs:
            ours_t = best(ours_t_runs)
            label = f"chain (hcsflow {args.chain_threads} threads)"
            rows.append((label, theirs, ours_t, compare(op, ours_t, theirs, desc["features_list"])))
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    def fmt(r: dict, key: str, unit: str) -> str:
        if not r:
            return "-"
        if "error" in r:
            return "error"
        return f"{r[key]:.1f} {unit}" if key in ("seconds", "cpu") else f"{r[key] / 1024:.2f} GB"

    head = (
        f"{'step':<30} {'pycytominer s':>14} {'hcsflow s':>10} {'speed-up':>9} "
        f"{'pyc. CPU s':>11} {'hcs. CPU s':>11} {'CPU ratio':>10} "
        f"{'pycytominer peak':>17} {'hcsflow peak':>13} {'mem ratio':>10}  numbers"
    )
    print()
    print(head)
    print("-" * len(head))
    for label, theirs, ours, cmp in rows:
        sp = mr = cr = "-"
        if theirs and "seconds" in theirs and "seconds" in ours:
            sp = f"{theirs['seconds'] / ours['seconds']:.1f}x"
            cr = f"{theirs['cpu'] / ours['cpu']:.1f}x"
            mr = f"{ours['peak_mb'] / theirs['peak_mb']:.2f}"
        print(
            f"{label:<30} {fmt(theirs, 'seconds', 's'):>14} {fmt(ours, 'seconds', 's'):>10} "
            f"{sp:>9} {fmt(theirs, 'cpu', 's'):>11} {fmt(ours, 'cpu', 's'):>11} {cr:>10} "
            f"{fmt(theirs, 'peak_mb', ''):>17} {fmt(ours, 'peak_mb', ''):>13} "
            f"{mr:>10}  {cmp}"
        )
        for tool, r in (("pycytominer", theirs), ("hcsflow", ours)):
            if r and "error" in r:
                print(f"    {tool} error: {r['error']}")


if __name__ == "__main__":
    main()
