"""Campaign scale and memory: DAG build time and job count, peak memory per rule.

Sub-commands (each prints markdown tables; run from the repository root)::

    .venv/bin/python benchmarks/scale.py dag
    .venv/bin/python benchmarks/scale.py dag --plates 10 50 100 --files probe
    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python benchmarks/scale.py memory
    .venv/bin/python benchmarks/scale.py profile

``dag``
    A campaign of ``--plates`` plates x 384 wells x 9 sites, five channels, written without
    images: one plate map per plate, an image folder per plate holding the file names of
    every field and channel as empty files (``--files all``; ``probe``: one field, enough for
    the start-up channel check) and the plates' manifests and discovery QC tables, written
    directly in the manifest's format (``PathName_`` relative to the image folder), so that
    Snakemake treats discovery as done. A first dry run writes what the workflow writes while
    it parses (the start-up listings ``results/listing/{plate}.tsv``, inputs of ``discover``);
    the discovery outputs are then dated after every other file, and the timed commands are
    ``snakemake --list-rules`` (parsing the workflow: configuration and plate-sheet
    validation, the start-up listing of every image folder, plate maps, shards) and
    ``snakemake -n`` (parse + DAG of every job from illumination to the report), each the
    median of ``--repeats`` runs in a fresh process. Jobs are counted per rule from the dry
    run's job table; no ``discover`` job may be scheduled.
``memory``
    Peak memory (``max_rss`` of Snakemake's benchmark records under ``results/benchmarks/``)
    of every job of workflow runs on a simulated slice of a 384-well plate: row A (24 wells)
    x 9 sites of 1080 x 1080 five-channel fields (plate ``S48``, seed 1; each run's plates
    are hard links to its files), run to the report with the default configuration. Run
    ``growth`` (``wells_per_shard: 4``): plate G4 (A01-A04, one shard) and G8 (A01-A08, two
    shards); shard 000 of both reads the same fields, so equal peaks there show that a shard's
    memory does not depend on the plate, and the plate-level jobs compare half and whole
    plate. Run ``shard24``: plate F24, the 24 wells as one default shard of 216 fields. The
    simulated plate is cached under ``--workdir``.
``profile``
    cProfile of ``snakemake --list-rules`` on the ``dag`` campaign (written if absent): the
    functions with the largest cumulative time.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from _tables import markdown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcsflow.discover import QC_COLUMNS, Channel, _manifest_row, _manifest_table  # noqa: E402
from hcsflow.io import make_provenance, write_table  # noqa: E402
from hcsflow.platemap import read_platemap  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
#: the workflow's files copied into a benchmark folder (as the workflow tests do)
WORKFLOW = ("Snakefile", "rules", "config", "envs", "workflow_scripts", "profiles")
CHANNELS = [
    {"name": "DNA", "id": "w1", "role": "nuclear"},
    {"name": "ER", "id": "w2", "role": "cytoplasm"},
    {"name": "RNA", "id": "w3", "role": "other"},
    {"name": "AGP", "id": "w4", "role": "membrane"},
    {"name": "Mito", "id": "w5", "role": "other"},
]
ROWS384 = "ABCDEFGHIJKLMNOP"
#: goals printed beside the figures
GOAL_DAG_S = 30.0


def copy_workflow(root: Path) -> None:
    """Copy the checkout's workflow (Snakefile, rules, config, envs, scripts) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW:
        src, dst = REPO / name, root / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)


def snakemake(root: Path, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    """``snakemake --configfile over.yaml ARGS`` in ``root``, with this checkout importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [SNAKEMAKE, "--configfile", "over.yaml", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the job table that ``snakemake -n`` prints."""
    table = output.split("Job stats:", 1)[-1]
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


# ----------------------------------------------------------------------------------- dag


def platemap_384() -> pd.DataFrame:
    """A 384-well plate map: 48 DMSO wells (columns 1 and 24... spread), the rest treatments."""
    wells = [f"{r}{c:02d}" for r in ROWS384 for c in range(1, 25)]
    rows = []
    for i, well in enumerate(wells):
        if i % 8 == 0:
            rows.append((well, "DMSO", 0.0, "negcon", "control"))
        else:
            rows.append((well, f"CMPD-{i % 40:02d}", [0.1, 1.0, 10.0][i % 3], "trt", f"moa{i % 7}"))
    return pd.DataFrame(rows, columns=["well", "compound", "dose_um", "role", "moa"])


def write_plate(
    root: Path, plate: str, batch: str, platemap: pd.DataFrame, sites: int, files: str
) -> tuple[Path, Path]:
    """Plate map, image folder (empty files named as ImageXpress names them) and manifest.

    Returns the image folder and the plate map path.
    """
    pm_path = root / "platemaps" / f"{plate}.csv"
    pm_path.parent.mkdir(parents=True, exist_ok=True)
    platemap.to_csv(pm_path, index=False)
    images = root / "images" / plate
    images.mkdir(parents=True, exist_ok=True)
    wells = platemap["well"].tolist()
    fields = [(w, s) for w in wells for s in range(1, sites + 1)]
    written = fields if files == "all" else fields[:1]
    for well, site in written:
        for ch in range(1, 6):
            (images / f"{plate}_{well}_s{site}_w{ch}.tif").touch()
    # the records discovery would make of these files (paths relative to the image folder)
    chans = [Channel(**c) for c in CHANNELS]
    recs = [
        _manifest_row(
            plate,
            well,
            site,
            {c.name: ("", f"{plate}_{well}_s{site}_{c.id}.tif") for c in chans},
            chans,
            batch,
        )
        for well, site in fields
    ]
    manifest = _manifest_table(recs, read_platemap(pm_path))
    prov = make_provenance("discover", config={"synthetic": True}, inputs={})
    results = root / "results"
    write_table(manifest, results / "manifest" / f"{plate}.parquet", prov)
    qc = pd.DataFrame(columns=QC_COLUMNS)
    write_table(qc, results / "qc" / f"{plate}_discovery.parquet", prov)
    return images, pm_path


def discovery_outputs(root: Path, plates: Sequence[str]) -> list[Path]:
    results = root / "results"
    return [results / "manifest" / f"{p}.parquet" for p in plates] + [
        results / "qc" / f"{p}_discovery.parquet" for p in plates
    ]


def date_discovery_outputs(root: Path, plates: Sequence[str]) -> None:
    """Date the discovery outputs after every other file of the campaign folder."""
    newest = max(
        (p.stat().st_mtime for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts),
        default=time.time(),
    )
    stamp = max(newest, time.time()) + 1
    for path in discovery_outputs(root, plates):
        os.utime(path, (stamp, stamp))


def build_campaign(root: Path, n_plates: int, sites: int, files: str) -> list[str]:
    """Write (or reuse) a campaign of ``n_plates`` 384-well plates in ``root``."""
    plates = [f"P{i:03d}" for i in range(1, n_plates + 1)]
    stamp = root / f".built-{n_plates}-{sites}-{files}"
    copy_workflow(root)
    if not stamp.exists():
        if root.exists():
            for sub in ("images", "platemaps", "results", ".snakemake"):
                shutil.rmtree(root / sub, ignore_errors=True)
        pm = platemap_384()
        lines = ["plate\timages\tlayout\tplatemap\tbatch"]
        t0 = time.perf_counter()
        for i, plate in enumerate(plates):
            batch = f"B{i // 10 + 1:02d}"
            images, pm_path = write_plate(root, plate, batch, pm, sites, files)
            lines.append(f"{plate}\t{images}\timagexpress\t{pm_path}\t{batch}")
        (root / "plates.tsv").write_text("\n".join(lines) + "\n")
        (root / "over.yaml").write_text("plates: plates.tsv\nresults: results\n")
        print(f"wrote {n_plates} plates in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        stamp.touch()
    return plates


def timed_run(root: Path, *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system, the process and its children) of a snakemake run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = snakemake(root, *args)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if run.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return elapsed, cpu, run


def profile_args(root: Path, name: str) -> list[str]:
    """``--profile profiles/<name>`` (copied into ``root``), or nothing for ``""``."""
    return ["--profile", str(root / "profiles" / name)] if name else []


def cmd_dag(args: argparse.Namespace) -> None:
    rows = []
    for n in args.plates:
        root = Path(args.workdir) / f"dag-{n}-{args.files}"
        plates = build_campaign(root, n, args.sites, args.files)
        profile = profile_args(root, args.profile)
        snakemake(root, *profile, "-n", "--quiet")  # whatever the workflow writes while parsing
        date_discovery_outputs(root, plates)
        parse, dry, parse_cpu, dry_cpu = [], [], [], []
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            t, c, _run = timed_run(root, *profile, "--list-rules")
            parse.append(t)
            parse_cpu.append(c)
            t, c, run = timed_run(root, *profile, "-n", "--quiet", "rules")
            dry.append(t)
            dry_cpu.append(c)
            counts = job_counts(run.stdout + run.stderr)
        if counts.get("discover"):
            raise SystemExit(f"{counts['discover']} discover jobs scheduled: {counts}")
        n_files = sum(1 for _ in (root / "images").rglob("*.tif"))
        total = sum(counts.values())
        dry_s = statistics.median(dry)
        rows.append(
            {
                "plates": n,
                "fields": n * 384 * args.sites,
                "image files": f"{n_files:,}",
                "parse (s)": f"{statistics.median(parse):.1f} ({statistics.median(parse_cpu):.1f})",
                "dry run (s)": f"**{dry_s:.1f}** ({statistics.median(dry_cpu):.1f})"
                + (" (over goal)" if dry_s > GOAL_DAG_S else ""),
                "jobs": f"{total:,}",
                "per rule": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            }
        )
        print(markdown(rows[-1:]), file=sys.stderr, flush=True)
    print(
        f"\n## DAG of a campaign: 384 wells x {args.sites} sites per plate, discovery done, "
        f"image folders with {args.files} file names, profile "
        f"{args.profile or '(none)'}; median of {args.repeats} runs, wall s (CPU s in brackets; "
        f"goal: dry run < {GOAL_DAG_S:.0f} s)\n"
    )
    print(markdown(rows))


def cmd_profile(args: argparse.Namespace) -> None:
    root = Path(args.workdir) / f"dag-{args.plates[0]}-{args.files}"
    build_campaign(root, args.plates[0], args.sites, args.files)
    prof = root / "parse.prof"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(prof),
            SNAKEMAKE,
            "--configfile",
            "over.yaml",
            *profile_args(root, args.profile),
            *(["-n", "--quiet", "rules"] if args.dry_run else ["--list-rules"]),
        ],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    out = io.StringIO()
    pstats.Stats(str(prof), stream=out).sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())


# -------------------------------------------------------------------------------- memory

#: the simulated plate the memory runs draw their files from (row A of a 384-well plate)
SOURCE_PLATE = "S48"
SOURCE_SEED = 1
#: runs of the memory benchmark: name -> (plates as (name, number of wells), config lines)
MEMORY_RUNS = {
    "growth": ([("G4", 4), ("G8", 8)], "shards: {wells_per_shard: 4}\n"),
    "shard24": ([("F24", 24)], ""),
}


def source_platemap() -> pd.DataFrame:
    """Row A of the simulator's 384-well design, DMSO in A01, A07, A13 and A19."""
    from hcsflow.simulate import default_platemap

    pm = default_platemap(384)
    pm = pm[pm["well"].str[0] == "A"].reset_index(drop=True)
    neg = pm["well"].isin(["A01", "A07", "A13", "A19"])
    pm.loc[neg, ["compound", "dose_um", "role", "moa", "target"]] = [
        "DMSO",
        0.0,
        "negcon",
        "control",
        "none",
    ]
    return pm


def source_plate(workdir: Path, sites: int, size: int) -> tuple[Path, pd.DataFrame]:
    """The simulated source plate's image folder (simulated on first use) and plate map."""
    pm = source_platemap()
    root = workdir / "memory" / SOURCE_PLATE
    images = root / "images"
    wanted = [
        images / f"{SOURCE_PLATE}_{w}_s{s}_w{c}.tif"
        for w in pm["well"]
        for s in range(1, sites + 1)
        for c in range(1, 6)
    ]
    if not all(p.exists() for p in wanted):
        from hcsflow.simulate import simulate_plate

        t0 = time.perf_counter()
        simulate_plate(
            root,
            plate=SOURCE_PLATE,
            n_wells=384,
            sites=sites,
            size=size,
            platemap=pm,
            seed=SOURCE_SEED,
        )
        print(f"simulated the source plate in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return images, pm


def memory_run(workdir: Path, name: str, sites: int, size: int, cores: int) -> Path:
    """Write and run one memory run (to the report); return its folder."""
    plates, extra = MEMORY_RUNS[name]
    images, pm = source_plate(workdir, sites, size)
    root = workdir / "memory" / name
    copy_workflow(root)
    lines = ["plate\timages\tlayout\tplatemap\tbatch"]
    for plate, n_wells in plates:
        folder = root / "images" / plate
        folder.mkdir(parents=True, exist_ok=True)
        for well in pm["well"][:n_wells]:
            for site in range(1, sites + 1):
                for c in range(1, 6):
                    dst = folder / f"{plate}_{well}_s{site}_w{c}.tif"
                    if not dst.exists():
                        os.link(images / f"{SOURCE_PLATE}_{well}_s{site}_w{c}.tif", dst)
        pm_path = root / f"{plate}_platemap.csv"
        pm.head(n_wells).to_csv(pm_path, index=False)
        lines.append(f"{plate}\t{folder}\timagexpress\t{pm_path}\tB1")
    (root / "plates.tsv").write_text("\n".join(lines) + "\n")
    (root / "over.yaml").write_text("plates: plates.tsv\nresults: results\n" + extra)
    t0 = time.perf_counter()
    run = snakemake(root, "--profile", "profiles/local", "--cores", str(cores), "--keep-going")
    print(f"run {name}: {time.perf_counter() - t0:.0f} s, exit {run.returncode}", file=sys.stderr)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
    return root


def benchmark_records(root: Path) -> list[dict[str, Any]]:
    """One row per job: rule, plate, shard and Snakemake's benchmark figures."""
    rows = []
    bench = root / "results" / "benchmarks"
    for path in sorted(bench.rglob("*.tsv")):
        with open(path) as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"))
        rel = path.relative_to(bench).with_suffix("")
        rows.append(
            {
                "rule": rel.parts[0],
                "job": "/".join(rel.parts[1:]) or rel.parts[0],
                "max_rss_mb": float(rec["max_rss"]),
                "s": float(rec["s"]),
                "cpu_s": float(rec.get("cpu_time") or "nan"),
            }
        )
    return rows


def cmd_memory(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    tables = {}
    for name in args.runs:
        root = workdir / "memory" / name
        if not args.report_only:
            root = memory_run(workdir, name, args.sites, args.size, args.cores)
        tables[name] = benchmark_records(root)
    for name, rows in tables.items():
        plates, extra = MEMORY_RUNS[name]
        desc = ", ".join(f"{p}: {n} wells x {args.sites} sites" for p, n in plates)
        print(
            f"\n## Run {name} ({desc}; {args.size} x {args.size} five-channel fields; "
            f"config: defaults{' + ' + extra.strip() if extra else ''}): Snakemake's benchmark "
            "record of every job\n"
        )
        print(
            markdown(
                [
                    {
                        "rule": r["rule"],
                        "job": r["job"],
                        "peak RSS (MB)": f"{r['max_rss_mb']:.0f}",
                        "wall (s)": f"{r['s']:.0f}",
                        "CPU (s)": f"{r['cpu_s']:.0f}",
                    }
                    for r in rows
                ]
            )
        )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/hcsflow-bench-scale", help="cache folder")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("dag", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--plates", type=int, nargs="+", default=[100])
        p.add_argument("--sites", type=int, default=9)
        p.add_argument("--files", choices=("all", "probe"), default="all")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument(
            "--profile", default="slurm", help="profiles/<name> to run with ('' for none)"
        )
    sub.choices["profile"].add_argument("--top", type=int, default=40)
    sub.choices["profile"].add_argument("--dry-run", action="store_true")
    p = sub.add_parser("memory")
    p.add_argument("--runs", nargs="+", default=list(MEMORY_RUNS), choices=list(MEMORY_RUNS))
    p.add_argument("--sites", type=int, default=9)
    p.add_argument("--size", type=int, default=1080)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="print the tables of finished runs")
    args = ap.parse_args(argv)
    {"dag": cmd_dag, "profile": cmd_profile, "memory": cmd_memory}[args.cmd](args)


if __name__ == "__main__":
    main()
