"""Per-cell stage benchmarks: agreement with CellProfiler, speed, table I/O, MoA retrieval.

Sub-commands (each prints markdown tables; run from the repository root)::

    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/features.py cp
    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/features.py speed
    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/features.py io
    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/features.py retrieval

``cp``
    For every feature family whose module (:data:`hcsflow.features.core.FAMILIES`) and
    CellProfiler reference (``benchmarks/cp_reference/<family>.py``, which calls ``cp_measure``,
    CellProfiler's own measurement code) both import, both are run on the same simulated
    fields (seeds 7001.., corrected image in CellProfiler units, true masks, the three
    compartments) with the workflow's default options (config/config.yaml ``features``).
    Per feature, over the cells of all fields pooled: Pearson r, the median relative difference
    ``|ours - ref| / max(|ref|, tiny)`` (``tiny`` = 1e-6 times the feature's 99th percentile
    of ``|ref|``, at least 1e-12) and the share of cells that are NaN in one and not the other.
    A feature agrees when r >= 0.99, the median relative difference <= 1 % and NaN patterns
    differ in <= 1 % of cells; a feature constant in both (r undefined) agrees when the values
    are equal (rtol 1e-6).
``speed``
    Seconds per 1080 x 1080 five-channel simulated field (seed 7101, ~220 cells, true masks):
    each family on the three compartments and ``measure()`` as a whole (median of 3 runs after
    a warm-up that compiles numba kernels); cp_measure on the ``Cells`` compartment (once,
    through the cp_reference functions); CNN embedding per field (imagenet, and a small
    trained embedder: a throwaway one trained for a few steps unless ``--checkpoint`` is
    given; inference only); segmentation with the shipped model; the end-to-end figure
    (correction + segmentation + measurement, with and without embedding).
``io``
    Per-cell tables from ``measure()`` on simulated fields (seeds 7201..), float32 features,
    with and without 256 embedding columns: rows per second written and read with
    ``hcsflow.io.write_table`` / ``read_table`` and MB per 1,000 cells.
``retrieval``
    MoA retrieval on simulated screens with masks predicted by the shipped segmenter: the demo
    campaign's design (4 replicate plates ``DEMO-P1..4``, seeds 1-4, 96 wells, 540 px, default
    plate map; read from ``demo/`` when ``make demo-data`` made it, else simulated) and an
    independent screen (seeds 101-104, off-centre vignetting, 0.8x density, well-to-well
    background CV 0.15, field jitter 0.05). Illumination is corrected with the simulator's
    true profiles. Per screen and feature set (CellProfiler features; each embedding:
    imagenet, weakly_supervised and self_supervised trained on a deterministic sample of the
    screen's own cells; features + embeddings) the metrics of ``benchmarks/analysis.py``
    (``evaluate``, ``negcon_pseudo``): compounds detected, inactive compounds and DMSO
    pseudo-compounds called, HDBSCAN ARI, NSC accuracy and consistency mAP. Simulated plates,
    masks, per-cell tables, embedders and embeddings are cached under ``--workdir``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _tables import markdown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from hcsflow.features.core import (  # noqa: E402
    FAMILIES,
    MeasureParams,
    compartments_of,
    measure,
    pair_nuclei,
)

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
IMAGE_MPP = 0.65
#: seeds reserved for each check (no other benchmark uses them)
CP_SEEDS = 7001
SPEED_SEED = 7101
IO_SEEDS = 7201
#: goals printed beside the measured figures (seconds per 1080 x 1080 field, 2 threads)
GOAL_MEASURE_S = 1.5
GOAL_EMBED_S = 1.0
GOAL_END_TO_END_S = 3.5
EMBEDDINGS = ("imagenet", "weakly_supervised", "self_supervised")
#: the features of the simulator's truth table (benchmarks/analysis.py), for comparison
BASIC_FEATURES = (
    [f"{c}_AreaShape_{m}" for c in ("Cells", "Nuclei") for m in ("Area", "Eccentricity")]
    + [f"{c}_AreaShape_{m}" for c in ("Cells", "Nuclei") for m in ("Solidity", "Perimeter")]
    + [
        f"{c}_Intensity_MeanIntensity_{ch}"
        for c in ("Cells", "Nuclei", "Cytoplasm")
        for ch in CHANNELS
    ]
    + [f"Cells_Intensity_StdIntensity_{ch}" for ch in CHANNELS]
)


# ------------------------------------------------------------------------------------ helpers


def default_config() -> dict[str, Any]:
    """config/config.yaml (the workflow's defaults)."""
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def default_params() -> MeasureParams:
    """The workflow's default measurement parameters (config/config.yaml ``features``).

    Families whose module does not exist (yet) are left out, with a warning.
    """
    params = MeasureParams.from_config(default_config()["features"])
    present = tuple(f for f in params.families if module_available(FAMILIES[f][0]))
    if present != params.families:
        missing = sorted(set(params.families) - set(present))
        print(f"WARNING: feature families {missing} are missing; left out", file=sys.stderr)
        params = MeasureParams(families=present, options=params.options)
    return params


def load_embedder(source: str) -> Any:
    """An Embedder as the workflow loads it (config ``embedding``), for the five channels.

    ``"imagenet"`` gets the configured ``crop_um``; a trained checkpoint keeps the crop it was
    trained with.
    """
    from hcsflow.features.embed import Embedder

    emb = default_config()["embedding"]
    return Embedder.load(
        source,
        device="cpu",
        batch_size=int(emb["batch_size"]),
        crop_um=float(emb["crop_um"]) if source == "imagenet" else None,
        channels=CHANNELS,
    )


def corrected_field(seed: int, size: int):
    """A simulated field, corrected and in CellProfiler units, with its compartments.

    Returns
    -------
    image : ndarray of float32, shape (5, size, size)
        ``(raw - dark) / flat / 65535``.
    comps : dict of str to ndarray of int32
        ``Cells``, ``Nuclei``, ``Cytoplasm`` label images (object k = row k - 1).
    n : int
    field : SimulatedField
    """
    from hcsflow.simulate import simulate_field

    f = simulate_field(seed, shape=(size, size))
    image = ((f.image - f.darkfield) / f.flatfield / 65535).astype(np.float32)
    cells_k, nuclei_k, numbers = pair_nuclei(f.nuclei, f.cells)
    return image, compartments_of(cells_k, nuclei_k), len(numbers), f


def module_available(name: str) -> bool:
    """True when module ``name`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def family_function(family: str) -> Callable | None:
    """Our family function, or None when its module does not exist yet."""
    module, func = FAMILIES[family]
    if not module_available(module):
        return None
    return getattr(importlib.import_module(module), func)


def reference_function(family: str) -> Callable | None:
    """``cp_reference.<family>.reference``, or None when that module does not exist."""
    if not (REPO / "benchmarks" / "cp_reference" / f"{family}.py").exists():
        return None
    return importlib.import_module(f"cp_reference.{family}").reference


def accepted_options(fn: Callable, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that ``fn`` accepts as keywords."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def median_time(fn: Callable, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` (after one untimed call)."""
    return bench(fn, repeats, warmup).wall


class Timing:
    """Median wall and CPU seconds (this process, all threads) of repeated calls."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.wall = float(np.median(wall))
        self.cpu = float(np.median(cpu))
        self.wall_min = float(np.min(wall))

    def __str__(self) -> str:
        return f"{self.wall:.3f} ({self.cpu:.2f})"


def bench(fn: Callable, repeats: int, warmup: bool = True) -> Timing:
    """Wall and CPU times of ``repeats`` calls of ``fn()`` (after one untimed call)."""
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(wall, cpu)


def set_torch_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# ------------------------------------------------------------------------------------- cp


def compare_feature(ours: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Agreement statistics of one feature over pooled cells (see the module docstring)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    fo, fr = np.isfinite(ours), np.isfinite(ref)
    both = fo & fr
    nan_mismatch = float(np.mean(fo != fr)) if len(ours) else 0.0
    o, r = ours[both], ref[both]
    out: dict[str, Any] = {"n": int(both.sum()), "nan_mismatch": nan_mismatch}
    if len(o) == 0:
        out.update(r=np.nan, rel=np.nan, constant=True, agree=nan_mismatch == 0.0)
        return out
    scale = float(np.percentile(np.abs(r), 99))
    tiny = max(1e-12, 1e-6 * scale)
    rel = np.abs(o - r) / np.maximum(np.abs(r), tiny)
    med = float(np.median(rel))
    const_o = np.ptp(o) == 0
    const_r = np.ptp(r) == 0
    if const_o or const_r or len(o) < 3:
        equal = bool(np.allclose(o, r, rtol=1e-6, atol=1e-12))
        out.update(r=np.nan, rel=med, constant=True, agree=equal and nan_mismatch <= 0.01)
        return out
    pr = float(np.corrcoef(o, r)[0, 1])
    out.update(
        r=pr,
        rel=med,
        constant=False,
        agree=bool(pr >= 0.99 and med <= 0.01 and nan_mismatch <= 0.01),
    )
    return out


def equal_columns(ours: np.ndarray, joined: Mapping[str, np.ndarray]) -> str:
    """Names of cp_measure columns (same family) equal to ``ours`` in every cell, if any.

    Finds features that cp_measure writes under another name (a shifted column).
    """
    hits = [
        name
        for name, both in joined.items()
        if np.allclose(ours, both[1], rtol=1e-6, atol=1e-12, equal_nan=True)
    ]
    return ", ".join(hits) if hits else "-"


def cmd_cp(args: argparse.Namespace) -> None:
    params = default_params()
    families = [f for f in FAMILIES if not args.families or f in args.families]
    fns: dict[str, tuple[Callable, Callable, dict, dict]] = {}
    missing = []
    for fam in families:
        try:
            ours, ref = family_function(fam), reference_function(fam)
        except Exception as exc:  # a family module that does not import is reported
            missing.append(f"{fam} (import failed: {type(exc).__name__}: {exc})")
            continue
        if ours is None or ref is None:
            what = [w for w, x in (("module", ours), ("cp_reference", ref)) if x is None]
            missing.append(f"{fam} (no {' / '.join(what)})")
            continue
        opts = dict(params.options.get(fam, {}))
        ref_opts = accepted_options(ref, opts)
        fns[fam] = (ours, ref, accepted_options(ours, ref_opts), ref_opts)
    pooled: dict[str, dict[str, list[np.ndarray]]] = {f: {} for f in fns}
    ref_only: dict[str, set[str]] = {f: set() for f in fns}
    ours_only: dict[str, set[str]] = {f: set() for f in fns}
    times: dict[str, list[float]] = {f: [0.0, 0.0] for f in fns}
    n_cells = 0
    seeds = list(range(args.first_seed, args.first_seed + args.fields))
    for i, seed in enumerate(seeds):
        image, comps, n, _ = corrected_field(seed, args.size)
        n_cells += n
        if i == 0:  # warm-up: compile numba kernels outside the timing
            for ours_fn, _, o_opts, _ in fns.values():
                ours_fn(image, comps, n, CHANNELS, **o_opts)
        for fam, (ours_fn, ref_fn, o_opts, r_opts) in fns.items():
            ours, t_o = timed(ours_fn, image, comps, n, CHANNELS, **o_opts)
            try:
                ref, t_r = timed(ref_fn, image, comps, n, CHANNELS, **r_opts)
            except Exception:
                print(f"cp_reference.{fam} failed on seed {seed}:\n{traceback.format_exc()}")
                ref, t_r = {}, 0.0
            times[fam][0] += t_o
            times[fam][1] += t_r
            ours_only[fam] |= set(ours) - set(ref)
            ref_only[fam] |= set(ref) - set(ours)
            for name in [k for k in ours if k in ref]:  # our column order
                pooled[fam].setdefault(name, []).append(
                    np.stack([np.asarray(ours[name], float), np.asarray(ref[name], float)])
                )
        print(f"seed {seed}: {n} cells", file=sys.stderr, flush=True)
    summary, bad = [], []
    total_shared = total_agree = 0
    for fam, feats in pooled.items():
        stats = {}
        joined = {name: np.concatenate(parts, axis=1) for name, parts in feats.items()}
        for name, both in joined.items():
            stats[name] = compare_feature(both[0], both[1])
        agree = sum(s["agree"] for s in stats.values())
        total_shared += len(stats)
        total_agree += agree
        summary.append(
            {
                "family": fam,
                "shared features": len(stats),
                "agreeing": agree,
                "share": f"{agree / len(stats):.1%}" if stats else "n/a",
                "only ours": len(ours_only[fam]),
                "only cp_measure": len(ref_only[fam]),
                "ours s (total)": f"{times[fam][0]:.2f}",
                "cp_measure s (total)": f"{times[fam][1]:.1f}",
            }
        )
        for name, s in stats.items():
            if not s["agree"]:
                bad.append(
                    {
                        "family": fam,
                        "feature": name,
                        "r": f"{s['r']:.4f}" if np.isfinite(s["r"]) else "const",
                        "median rel diff": f"{s['rel']:.2%}" if np.isfinite(s["rel"]) else "n/a",
                        "NaN mismatch": f"{s['nan_mismatch']:.1%}",
                        "cells": s["n"],
                        "equals cp_measure's": equal_columns(joined[name][0], joined),
                    }
                )
    summary.append(
        {
            "family": "**all**",
            "shared features": total_shared,
            "agreeing": total_agree,
            "share": f"{total_agree / total_shared:.1%}" if total_shared else "n/a",
            "only ours": sum(len(v) for v in ours_only.values()),
            "only cp_measure": sum(len(v) for v in ref_only.values()),
            "ours s (total)": f"{sum(t[0] for t in times.values()):.2f}",
            "cp_measure s (total)": f"{sum(t[1] for t in times.values()):.1f}",
        }
    )
    print(
        f"\n## Agreement with CellProfiler (cp_measure) - {args.fields} simulated fields of "
        f"{args.size} px (seeds {seeds[0]}-{seeds[-1]}), {n_cells} cells, true masks, "
        "3 compartments\n"
    )
    print(markdown(summary))
    if missing:
        print("\nNot compared: " + "; ".join(missing))
    for fam in fns:
        for label, names in (("only ours", ours_only[fam]), ("only cp_measure", ref_only[fam])):
            if names:
                shown = sorted(names)
                more = f" ... (+{len(shown) - 12})" if len(shown) > 12 else ""
                print(f"\n{fam}, {label}: {', '.join(shown[:12])}{more}")
    print(f"\n### Disagreeing features ({len(bad)})\n")
    print(markdown(bad) if bad else "none")


# ---------------------------------------------------------------------------------- speed


def embedder_source(name: str, args: argparse.Namespace, workdir: Path) -> Any:
    """An Embedder: ``imagenet`` or a small trained one (throwaway unless --checkpoint)."""
    if name == "imagenet":
        return load_embedder("imagenet")
    if args.checkpoint:
        return load_embedder(args.checkpoint)
    ckpt = workdir / "speed_throwaway_embedder.pt"
    if not ckpt.exists():
        train_throwaway_embedder(ckpt, steps=args.train_steps)
    return load_embedder(str(ckpt))


def train_throwaway_embedder(path: Path, steps: int) -> None:
    """Train a small self-supervised embedder for a few steps on the cells of two fields."""
    from hcsflow.features.crops import crop_size_px
    from hcsflow.features.embed_train import sample_crops, save_embedder, train_embedder

    crop_um = float(default_config()["embedding"]["crop_um"])
    size = crop_size_px(crop_um, IMAGE_MPP)
    crops = []
    for seed in (7151, 7152):
        image, comps, _, _ = corrected_field(seed, 540)
        c, _ = sample_crops(image * 65535, comps["Nuclei"], comps["Cells"], 64, seed, size)
        crops.append(c)
    ckpt = train_embedder(
        np.concatenate(crops),
        None,
        method="self_supervised",
        steps=steps,
        batch_size=32,
        seed=0,
        crop_um=crop_um,
        channel_names=CHANNELS,
    )
    save_embedder(ckpt, path)


def cmd_speed(args: argparse.Namespace) -> None:
    set_torch_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = default_params()
    image, comps, n, f = corrected_field(args.seed, args.size)
    nuclei, cells = f.nuclei, f.cells
    rows = []
    fam_total = fam_cpu = cp_total = 0.0
    cp_families = []
    for fam in params.families:
        fn = family_function(fam)
        opts = dict(params.options.get(fam, {}))
        t = bench(lambda fn=fn, opts=opts: fn(image, comps, n, CHANNELS, **opts), args.repeats)
        t_cells = bench(
            lambda fn=fn, opts=opts: fn(image, {"Cells": comps["Cells"]}, n, CHANNELS, **opts),
            args.repeats,
        )
        fam_total += t.wall
        fam_cpu += t.cpu
        ref = reference_function(fam) if not args.skip_cp else None
        t_cp: float | str = "n/a"
        if ref is not None:
            try:
                _, t_cp = timed(
                    ref,
                    image,
                    {"Cells": comps["Cells"]},
                    n,
                    CHANNELS,
                    **accepted_options(ref, opts),
                )
                cp_total += t_cp
                cp_families.append(fam)
            except Exception as exc:
                t_cp = f"failed ({type(exc).__name__})"
        rows.append(
            {
                "step": fam,
                "3 compartments": str(t),
                "Cells only": str(t_cells),
                "cp_measure, Cells only": f"{t_cp:.1f}" if isinstance(t_cp, float) else t_cp,
            }
        )
    t_measure = bench(lambda: measure(image, nuclei, cells, CHANNELS, params), args.repeats)
    rows.append(
        {
            "step": "sum of families",
            "3 compartments": f"{fam_total:.3f} ({fam_cpu:.2f})",
            "Cells only": "",
            "cp_measure, Cells only": f"{cp_total:.1f} ({len(cp_families)} families)",
        }
    )
    rows.append(
        {
            "step": f"**measure() total** (goal <= {GOAL_MEASURE_S} s)",
            "3 compartments": f"**{t_measure}**",
            "Cells only": "",
            "cp_measure, Cells only": "",
        }
    )
    print(
        f"\n## Speed - one simulated {args.size} x {args.size} five-channel field (seed "
        f"{args.seed}, {n} cells, true masks), {args.threads} threads: seconds per field, "
        f"median wall time of {args.repeats} runs after a warm-up (median CPU seconds of the "
        "process in brackets); cp_measure timed once\n"
    )
    print(markdown(rows), flush=True)

    # embeddings, segmentation, end to end
    raw_corr = ((f.image - f.darkfield) / f.flatfield).astype(np.float32)  # as the workflow
    cells_k, nuclei_k = comps["Cells"], comps["Nuclei"]
    erows = []
    embedders = {}
    for name in ("imagenet", "trained"):
        try:
            emb = embedder_source(name, args, workdir)
        except Exception as exc:
            erows.append({"step": f"embedding ({name})", "s/field": f"unavailable: {exc}"})
            continue
        embedders[name] = emb
        t = bench(lambda emb=emb: emb.embed(raw_corr, nuclei_k, cells_k, IMAGE_MPP), args.repeats)
        erows.append(
            {
                "step": f"embedding, {name} ({emb.dim} dims, {emb.crop_um:g} um crops)",
                "s/field": str(t),
                "goal": f"<= {GOAL_EMBED_S}",
            }
        )
    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.preprocess import combine_channels

    seg = Segmenter.load(device="cpu", threads=args.threads)

    def segment():
        return seg.predict(raw_corr[0], combine_channels([raw_corr[1], raw_corr[3]]), IMAGE_MPP)

    t_seg = bench(segment, args.repeats)
    erows.append({"step": "segmentation (shipped model, CPU)", "s/field": str(t_seg), "goal": ""})

    def end_to_end(embedder=None):
        corr = ((f.image - f.darkfield) / f.flatfield).astype(np.float32)
        nuc, cel = seg.predict(corr[0], combine_channels([corr[1], corr[3]]), IMAGE_MPP)
        measure(corr / np.float32(65535), nuc, cel, CHANNELS, params)
        if embedder is not None:
            ck, nk, _ = pair_nuclei(nuc, cel)
            embedder.embed(corr, nk, ck, IMAGE_MPP)

    t_e2e = bench(end_to_end, args.repeats)
    erows.append(
        {
            "step": "end to end: correction + segmentation + measure()",
            "s/field": f"**{t_e2e}**",
            "goal": f"<= {GOAL_END_TO_END_S}",
        }
    )
    for name, emb in embedders.items():
        t = bench(lambda emb=emb: end_to_end(emb), args.repeats)
        erows.append({"step": f"end to end + {name} embedding", "s/field": str(t), "goal": ""})
    print(
        f"\n### Embedding, segmentation, end to end (same field, {args.threads} threads; wall s, "
        "CPU s in brackets)\n"
    )
    print(markdown(erows))


# ------------------------------------------------------------------------------------- io


def simulated_cell_table(seeds: Sequence[int], size: int, params: MeasureParams) -> pd.DataFrame:
    """The per-cell table of ``measure()`` on simulated fields, float32 features."""
    parts = []
    for i, seed in enumerate(seeds):
        image, _, _, f = corrected_field(seed, size)
        t = measure(image, f.nuclei, f.cells, CHANNELS, params)
        head = pd.DataFrame(
            {
                "Metadata_Plate": "IO-P1",
                "Metadata_Well": f"{'ABCDEFGH'[i // 12 % 8]}{i % 12 + 1:02d}",
                "Metadata_Site": 1,
            },
            index=t.index,
        )
        parts.append(pd.concat([head, t], axis=1))
    cells = pd.concat(parts, ignore_index=True)
    feats = [c for c in cells.columns if not c.startswith("Metadata_")]
    cells[feats] = cells[feats].astype(np.float32)
    return cells


def io_figures(df: pd.DataFrame, repeats: int, workdir: Path) -> dict[str, Any]:
    from hcsflow.io import make_provenance, read_table, write_table

    path = workdir / "io_bench.parquet"
    prov = make_provenance("measure", config={"bench": True})
    t_w = median_time(lambda: write_table(df, path, prov), repeats)
    size = path.stat().st_size
    t_r = median_time(lambda: read_table(path), repeats)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    some = [c for c in df.columns if c.startswith("Metadata_")] + feats[:50]
    t_r50 = median_time(lambda: read_table(path, columns=some), repeats)
    path.unlink()
    n = len(df)
    return {
        "cells": n,
        "columns (features)": f"{df.shape[1]} ({len(feats)})",
        "write rows/s": f"{n / t_w:,.0f}",
        "read rows/s": f"{n / t_r:,.0f}",
        "read 50 features, rows/s": f"{n / t_r50:,.0f}",
        "MB per 1,000 cells": f"{size / n * 1000 / 1e6:.2f}",
        "MB per 1,000 cells (in memory)": f"{df.memory_usage(deep=True).sum() / n * 1000 / 1e6:.2f}",
    }


def cmd_io(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    set_torch_threads(args.threads)
    params = default_params()
    seeds = list(range(args.first_seed, args.first_seed + args.fields))
    cells = simulated_cell_table(seeds, args.size, params)
    emb, what = embedding_block(seeds, args.size, len(cells), workdir)
    measured = len(cells)
    rows = [
        {
            "table": "features, measured cells only (no replicates)",
            **io_figures(cells, args.repeats, workdir),
        }
    ]
    cells = replicate_rows(cells, args.rows)
    emb = replicate_rows(emb, args.rows)
    rows.append({"table": "features", **io_figures(cells, args.repeats, workdir)})
    with_emb = pd.concat([cells, emb], axis=1)
    rows.append(
        {
            "table": f"features + {emb.shape[1]} embedding columns ({what})",
            **io_figures(with_emb, args.repeats, workdir),
        }
    )
    print(
        f"\n## Per-cell table I/O - measure() on {len(seeds)} simulated {args.size} px fields "
        f"(seeds {seeds[0]}-{seeds[-1]}, {measured} cells, replicated to {len(cells)} rows with "
        f"0.1 % multiplicative jitter), float32 features, Snappy Parquet (hcsflow.io), "
        f"median of {args.repeats}\n"
    )
    print(markdown(rows))


def replicate_rows(df: pd.DataFrame, rows: int) -> pd.DataFrame:
    """``df`` repeated to ``rows`` rows; copies after the first get new object numbers and
    their float32 values multiplied by ``1 + 0.001 N(0, 1)`` (seeded), so that the repeats are
    not byte-identical (which Snappy would compress away)."""
    if rows <= len(df) or len(df) == 0:
        return df
    reps = -(-rows // len(df))
    parts = [df]
    rng = np.random.default_rng(0)
    floats = [c for c in df.columns if df[c].dtype == np.float32]
    for k in range(1, reps):
        copy = df.copy()
        x = copy[floats].to_numpy()
        copy[floats] = (x * (1 + 1e-3 * rng.standard_normal(x.shape))).astype(np.float32)
        if "Metadata_ObjectNumber" in copy:
            copy["Metadata_ObjectNumber"] = copy["Metadata_ObjectNumber"] + k * 100000
        parts.append(copy)
    return pd.concat(parts, ignore_index=True).iloc[:rows].reset_index(drop=True)


def embedding_block(
    seeds: Sequence[int], size: int, n_cells: int, workdir: Path, dim: int = 256
) -> tuple[pd.DataFrame, str]:
    """``dim`` embedding columns per cell, and where they come from.

    A trained embedder's output (the throwaway one of ``speed``, when it is in the work folder
    and ``dim`` wide), else the first ``dim`` imagenet features (DNA channel), else seeded
    normal values.
    """
    from hcsflow.features.embed import feature_names

    ckpt = workdir / "speed_throwaway_embedder.pt"
    try:
        emb = load_embedder(str(ckpt)) if ckpt.exists() else load_embedder("imagenet")
        what = "trained CellCNN" if ckpt.exists() else "imagenet, first 256 (DNA)"
        parts = []
        for seed in seeds:
            image, comps, _, _ = corrected_field(seed, size)
            parts.append(emb.embed(image * 65535, comps["Nuclei"], comps["Cells"], IMAGE_MPP))
        x = np.concatenate(parts).astype(np.float32)
        if x.shape[1] < dim:  # repeat columns up to dim
            x = np.tile(x, (1, -(-dim // x.shape[1])))
        x = x[:, :dim]
    except Exception as exc:
        print(f"(embedder unavailable: {exc}; using random values)", file=sys.stderr)
        what = "seeded normal values"
        x = np.random.default_rng(0).standard_normal((n_cells, dim)).astype(np.float32)
    return pd.DataFrame(x, columns=feature_names(dim)), what


# ------------------------------------------------------------------------------ retrieval


def bench_analysis() -> Any:
    """``benchmarks/analysis.py`` as a module (its metrics are reused, not rewritten)."""
    return importlib.import_module("analysis")


def screens(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The two simulated screens: plate names, seeds and simulate_plate options."""
    demo = {
        "label": "demo design (DEMO-P1..4, seeds 1-4, default optics)",
        "plates": {f"DEMO-P{i}": i for i in range(1, 5)},
        "options": {},
    }
    indep = {
        "label": (
            "independent (IND-P101..104, seeds 101-104, off-centre vignetting, density 0.8, "
            "background CV 0.15, jitter 0.05)"
        ),
        "plates": {f"IND-P{i}": i for i in range(101, 105)},
        "options": {
            "vignetting": "offcenter",
            "density": 0.8,
            "background_cv": 0.15,
            "background_jitter": 0.05,
        },
    }
    out = {"demo": demo, "independent": indep}
    for s in out.values():
        s["plates"] = dict(list(s["plates"].items())[: args.plates])
    return {k: out[k] for k in args.screens}


def plate_dir(args: argparse.Namespace, plate: str, seed: int, options: dict) -> Path:
    """A simulated plate folder (96 wells, ``args.size`` px, 2 sites), simulated if missing.

    The demo plates are read from ``demo/`` when it holds them with the same parameters.
    """
    import json

    from hcsflow.simulate import simulate_plate

    demo = REPO / "demo" / plate
    sim = demo / "truth" / "simulation.json"
    if not options and (demo / "platemap.csv").exists() and sim.exists():
        p = json.loads(sim.read_text())
        if (p["seed"], p["size"], p["n_wells"]) == (seed, args.size, 96) and p["sites"] >= 2:
            return demo
    out = Path(args.workdir) / "plates" / f"{plate}_{args.size}px"
    if not (out / "platemap.csv").exists():
        simulate_plate(
            out,
            plate=plate,
            n_wells=96,
            sites=2,
            size=args.size,
            seed=seed,
            n_workers=1,
            **options,
        )
    return out


def plate_fields(root: Path, sites: int) -> list[tuple[str, int]]:
    """(well, site) of the plate's imaged fields with site <= ``sites``, in well/site order."""
    fields = pd.read_csv(root / "truth" / "fields.csv", dtype={"well": str})
    fields = fields[fields["site"] <= sites].sort_values(["well", "site"])
    return [(w, int(s)) for w, s in zip(fields["well"], fields["site"], strict=True)]


_ILLUMINATION: dict[Path, tuple[np.ndarray, np.ndarray]] = {}


def _illumination(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's true (flat, dark) of a plate, each of shape (5, H, W); cached."""
    if root not in _ILLUMINATION:
        with np.load(root / "truth" / "illumination.npz") as z:
            _ILLUMINATION[root] = (z["flatfield"], z["darkfield"])
    return _ILLUMINATION[root]


def read_corrected(root: Path, plate: str, well: str, site: int) -> np.ndarray:
    """A field's five channels corrected with the simulator's true illumination (raw units)."""
    import tifffile

    flat, dark = _illumination(root)
    raw = np.stack(
        [
            tifffile.imread(root / "images" / f"{plate}_{well}_s{site}_w{c + 1}.tif")
            for c in range(len(CHANNELS))
        ]
    ).astype(np.float32)
    return ((raw - dark) / flat).astype(np.float32)


class MaskCache:
    """Masks predicted by the shipped segmenter, one npz per field under the work folder."""

    def __init__(self, workdir: Path, threads: int) -> None:
        self.dir = workdir / "masks"
        self.threads = threads
        self._seg = None

    def get(self, plate: str, well: str, site: int, corr: np.ndarray):
        path = self.dir / plate / f"{well}_s{site}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["nuclei"], z["cells"]
        if self._seg is None:
            from hcsflow.segmentation import Segmenter

            self._seg = Segmenter.load(device="cpu", threads=self.threads)
        from hcsflow.segmentation.preprocess import combine_channels

        nuc, cells = self._seg.predict(corr[0], combine_channels([corr[1], corr[3]]), IMAGE_MPP)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, nuclei=nuc, cells=cells)
        os.replace(tmp, path)
        return nuc, cells


def plate_metadata(root: Path) -> pd.DataFrame:
    from hcsflow.platemap import read_platemap

    return read_platemap(root / "platemap.csv")


def with_platemap(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add the plate map's Metadata_ columns (joined on Metadata_Well) after the keys."""
    pm = plate_metadata(root)
    out = table.merge(pm, on="Metadata_Well", how="left")
    front = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    front += [c for c in pm.columns if c != "Metadata_Well"]
    return out[front + [c for c in out.columns if c not in front]]


def plate_cells(
    args: argparse.Namespace, masks: MaskCache, plate: str, root: Path, params: MeasureParams
) -> pd.DataFrame:
    """Per-cell CellProfiler-class features of one plate (predicted masks), cached."""
    path = Path(args.workdir) / "cells" / f"{plate}_s{args.sites}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    parts = []
    t0 = time.perf_counter()
    fields = plate_fields(root, args.sites)
    for i, (well, site) in enumerate(fields):
        corr = read_corrected(root, plate, well, site)
        nuc, cells = masks.get(plate, well, site, corr)
        t = measure(corr / np.float32(65535), nuc, cells, CHANNELS, params)
        head = pd.DataFrame(
            {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}, index=t.index
        )
        parts.append(pd.concat([head, t], axis=1))
        if (i + 1) % 48 == 0:
            print(
                f"  {plate}: {i + 1}/{len(fields)} fields measured ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    cells_df = pd.concat(parts, ignore_index=True)
    feats = [c for c in cells_df.columns if not c.startswith("Metadata_")]
    cells_df[feats] = cells_df[feats].astype(np.float32)
    cells_df = with_platemap(cells_df, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells_df.to_parquet(path)
    return cells_df


def plate_embeddings(
    args: argparse.Namespace,
    masks: MaskCache,
    plate: str,
    root: Path,
    method: str,
    embedder: Any,
) -> pd.DataFrame:
    """Per-cell embeddings of one plate with one embedder, cached."""
    from hcsflow.features.embed import feature_names

    path = Path(args.workdir) / "embeddings" / method / f"{plate}_s{args.sites}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    parts = []
    for well, site in plate_fields(root, args.sites):
        corr = read_corrected(root, plate, well, site)
        nuc, cells = masks.get(plate, well, site, corr)
        cells_k, nuclei_k, numbers = pair_nuclei(nuc, cells)
        x = np.asarray(embedder.embed(corr, nuclei_k, cells_k, IMAGE_MPP), dtype=np.float32)
        t = pd.DataFrame(x.reshape(len(numbers), -1), columns=feature_names(embedder.dim))
        t.insert(0, "Metadata_ObjectNumber", numbers)
        t.insert(0, "Metadata_Site", site)
        t.insert(0, "Metadata_Well", well)
        t.insert(0, "Metadata_Plate", plate)
        parts.append(t)
    emb = with_platemap(pd.concat(parts, ignore_index=True), root)
    path.parent.mkdir(parents=True, exist_ok=True)
    emb.to_parquet(path)
    return emb


def training_sample(
    args: argparse.Namespace, masks: MaskCache, plates: dict[str, Path]
) -> tuple[np.ndarray, list[str]]:
    """A deterministic sample of a screen's cell crops and their treatments.

    As the workflow draws it (rule ``embed_sample``, :func:`hcsflow.features.shard.sample_fields`):
    ``args.cells_per_field`` cells per field chosen by
    :func:`hcsflow.features.embed_train.sample_crops` with the seed
    ``sha256("0:<plate>:<well>:<site>")``, crops of the configured ``crop_um``, every field
    (sites <= ``args.sites``) of every plate; the class is ``compound@dose``.
    """
    import hashlib

    from hcsflow.features.crops import crop_size_px
    from hcsflow.features.embed_train import sample_crops, treatment_name

    size = crop_size_px(float(default_config()["embedding"]["crop_um"]), IMAGE_MPP)
    crops, labels = [], []
    for plate, root in plates.items():
        pm = plate_metadata(root).set_index("Metadata_Well")
        for well, site in plate_fields(root, args.sites):
            corr = read_corrected(root, plate, well, site)
            nuc, cells = masks.get(plate, well, site, corr)
            cells_k, nuclei_k, _ = pair_nuclei(nuc, cells)
            key = f"0:{plate}:{well}:{site}"
            seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
            c, chosen = sample_crops(corr, nuclei_k, cells_k, args.cells_per_field, seed, size)
            crops.append(c)
            name = treatment_name(pm.loc[well, "Metadata_Compound"], pm.loc[well, "Metadata_Dose"])
            labels += [name] * len(chosen)
    return np.concatenate(crops), labels


def train_steps(args: argparse.Namespace, method: str) -> int:
    """Training steps of ``method``: ``--ssl-steps`` / ``--train-steps``, else the config's."""
    if method == "self_supervised" and args.ssl_steps:
        return int(args.ssl_steps)
    return int(args.train_steps or default_config()["embedding"]["train"]["steps"])


def trained_embedder(
    args: argparse.Namespace,
    masks: MaskCache,
    screen: str,
    plates: dict[str, Path],
    method: str,
) -> Any:
    """An embedder trained on the screen's own cells with the workflow's settings (cached)."""
    from hcsflow.features.embed_train import save_embedder, train_embedder, treatment_labels

    emb = default_config()["embedding"]
    train = emb["train"]
    steps = train_steps(args, method)
    ckpt = Path(args.workdir) / "embedders" / f"{screen}_s{args.sites}_{method}_{steps}steps.pt"
    if not ckpt.exists():
        crops, names = training_sample(args, masks, plates)
        labels, classes = treatment_labels(names)
        t0 = time.perf_counter()
        checkpoint = train_embedder(
            crops,
            labels if method == "weakly_supervised" else None,
            method=method,
            steps=steps,
            batch_size=int(train["batch_size"]),
            lr=float(train["lr"]),
            seed=int(train["seed"]),
            threads=args.threads,
            crop_um=float(emb["crop_um"]),
            classes=classes if method == "weakly_supervised" else None,
            channel_names=CHANNELS,
        )
        save_embedder(checkpoint, ckpt)
        print(
            f"  trained {method} embedder on {len(crops)} crops ({len(classes)} treatments) of "
            f"{screen} in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return load_embedder(str(ckpt))


def screen_metrics(
    cells: list[pd.DataFrame], truth: pd.DataFrame, args: argparse.Namespace, camp: dict
) -> dict[str, Any]:
    """benchmarks/analysis.py's metrics of one feature set of one screen."""
    AB = bench_analysis()
    from hcsflow import analysis as A
    from hcsflow import profiling as P

    prof = AB.well_profiles(cells)
    cprof, cons, _ = P.campaign_profiles(prof, camp)
    cfg = {"null_size": args.null_size, "fdr": args.fdr}
    m, _ = AB.evaluate(cprof, cons, truth, cfg)
    c_called = c_total = 0
    for rep in range(args.negcon_repeats):
        pseudo = AB.negcon_pseudo(prof, n=args.negcon_pseudo, seed=rep)
        pseudo = P.campaign_profiles(pseudo, camp)[0]
        act = A.phenotypic_activity(pseudo, null_size=args.null_size, fdr=args.fdr)
        comp = A.compound_activity(act)
        cneg = comp[comp["Metadata_Compound"].str.startswith("NEG-")]
        c_called, c_total = c_called + int(cneg["active"].sum()), c_total + len(cneg)
    return {
        "features selected": len(A.feature_columns(cprof)),
        "compounds detected (goal >= 0.90)": m["compounds detected"],
        "inactive compounds called (<= 0.05)": m["inactive compounds called"],
        "DMSO pseudo-compounds called (<= 0.05)": f"{c_called / c_total:.2f} ({c_called}/{c_total})",
        "ARI hdbscan (>= 0.8)": m["ARI hdbscan"],
        "NSC (>= 0.9)": m["NSC"],
        "MoA mAP": m["MoA mAP"],
    }


def metrics_path(args: argparse.Namespace, screen: str, feature_set: str, variant: str) -> Path:
    """Cache file of one screen x feature set x campaign variant's metrics."""
    tag = feature_set.replace(" + ", "+").replace(" ", "_").replace("(", "").replace(")", "")
    if "weakly_supervised" in feature_set:
        tag += f"_{train_steps(args, 'weakly_supervised')}steps"
    if "self_supervised" in feature_set:
        tag += f"_{train_steps(args, 'self_supervised')}steps"
    import hashlib

    AB = bench_analysis()
    camp = json.dumps(AB.variant_config(AB.campaign_config(), variant), sort_keys=True)
    key = hashlib.sha256(camp.encode()).hexdigest()[:8]
    name = (
        f"{screen}_p{args.plates}_s{args.sites}_{tag}_{variant}-{key}_null{args.null_size}_"
        f"rep{args.negcon_repeats}x{args.negcon_pseudo}_{args.fdr}.json"
    )
    return Path(args.workdir) / "metrics" / name


def join_cells(a: list[pd.DataFrame], b: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Per plate, the cells of ``a`` with the feature columns of ``b`` beside them."""
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    out = []
    for x, y in zip(a, b, strict=True):
        feats = [c for c in y.columns if not c.startswith("Metadata_")]
        out.append(x.merge(y[keys + feats], on=keys, how="inner", validate="one_to_one"))
    return out


def cmd_retrieval(args: argparse.Namespace) -> None:
    AB = bench_analysis()

    set_torch_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = default_params()
    camp = AB.campaign_config()
    masks = MaskCache(workdir, args.threads)
    rows = []
    for key, screen in screens(args).items():
        t0 = time.perf_counter()
        plates = {
            plate: plate_dir(args, plate, seed, screen["options"])
            for plate, seed in screen["plates"].items()
        }
        print(f"{key}: plates ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if args.stage == "masks":
            for plate, root in plates.items():
                t1 = time.perf_counter()
                fields = plate_fields(root, args.sites)
                for well, site in fields:
                    masks.get(plate, well, site, read_corrected(root, plate, well, site))
                print(
                    f"  {plate}: masks of {len(fields)} fields ({time.perf_counter() - t1:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            continue
        truth = pd.read_csv(next(iter(plates.values())) / "truth" / "treatments.csv")
        cp_cells = [plate_cells(args, masks, p, r, params) for p, r in plates.items()]
        n_cells = sum(len(c) for c in cp_cells)
        n_fields = sum(len(plate_fields(r, args.sites)) for r in plates.values())
        print(
            f"{key}: {n_cells} cells measured ({time.perf_counter() - t0:.0f} s)", file=sys.stderr
        )
        label = (
            f"{screen['label']}; {len(plates)} plates x 96 wells x {args.sites} site(s), "
            f"{args.size} px; {n_fields} fields, {n_cells / n_fields:.0f} cells/field, "
            "predicted masks"
        )

        def score(name: str, cells: list[pd.DataFrame], key: str = key, truth=truth) -> None:
            if args.sets and name not in args.sets:
                return
            for variant in args.variants:
                cache = metrics_path(args, key, name, variant)
                if cache.exists():
                    row = json.loads(cache.read_text())
                else:
                    t1 = time.perf_counter()
                    m = screen_metrics(cells, truth, args, AB.variant_config(camp, variant)[0])
                    row = {"screen": key, "feature set": name, "campaign": variant, **m}
                    row["analysis s"] = f"{time.perf_counter() - t1:.0f}"
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(row))
                rows.append(row)
                print(f"{key} / {name} / {variant}: {row}", file=sys.stderr, flush=True)

        score("CellProfiler", cp_cells)
        if args.basic:
            meta = [c for c in cp_cells[0].columns if c.startswith("Metadata_")]
            score("CellProfiler, 28 basic features", [c[meta + BASIC_FEATURES] for c in cp_cells])
        for method in args.embeddings:
            try:
                if method == "imagenet":
                    emb = load_embedder("imagenet")
                else:
                    emb = trained_embedder(args, masks, key, plates, method)
                emb_cells = [
                    plate_embeddings(args, masks, p, r, method, emb) for p, r in plates.items()
                ]
            except Exception:
                print(f"embedding {method} unavailable:\n{traceback.format_exc()}", file=sys.stderr)
                continue
            score(method, emb_cells)
            score(f"CellProfiler + {method}", join_cells(cp_cells, emb_cells))
            del emb_cells
        print(f"\n### {key}: {label}\n")
        print(markdown([r for r in rows if r["screen"] == key]), flush=True)
    if rows:
        print("\n## MoA retrieval on simulated screens (predicted masks)\n")
        print(markdown(rows))


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (set OMP/NUMBA too)")
    ap.add_argument("--workdir", default="/tmp/hcsflow-bench-features", help="cache folder")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("cp", help="agreement with CellProfiler (cp_measure)")
    p.add_argument("--fields", type=int, default=3, help="simulated fields")
    p.add_argument("--size", type=int, default=540, help="field side (pixels)")
    p.add_argument("--first-seed", type=int, default=CP_SEEDS)
    p.add_argument("--families", nargs="*", help="families to compare (default: all present)")

    p = sub.add_parser("speed", help="seconds per field")
    p.add_argument("--size", type=int, default=1080)
    p.add_argument("--seed", type=int, default=SPEED_SEED)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-cp", action="store_true", help="do not time cp_measure")
    p.add_argument("--checkpoint", help="a trained embedder to time (default: a throwaway one)")
    p.add_argument("--train-steps", type=int, default=20, help="steps of the throwaway embedder")

    p = sub.add_parser("io", help="per-cell table write/read throughput and size")
    p.add_argument("--fields", type=int, default=8)
    p.add_argument("--size", type=int, default=1080)
    p.add_argument("--first-seed", type=int, default=IO_SEEDS)
    p.add_argument("--rows", type=int, default=20000, help="table rows (a shard's cells)")
    p.add_argument("--repeats", type=int, default=3)

    p = sub.add_parser("retrieval", help="MoA retrieval on simulated screens, predicted masks")
    p.add_argument("--screens", nargs="+", default=["demo", "independent"])
    p.add_argument("--plates", type=int, default=4, help="replicate plates per screen")
    p.add_argument("--sites", type=int, default=2, help="sites per well used (1 or 2)")
    p.add_argument("--size", type=int, default=540)
    p.add_argument("--embeddings", nargs="*", default=list(EMBEDDINGS), choices=list(EMBEDDINGS))
    p.add_argument("--cells-per-field", type=int, default=4, help="training sample per field")
    p.add_argument(
        "--train-steps", type=int, default=0, help="embedder training steps (0: the config's)"
    )
    p.add_argument("--null-size", type=int, default=10000)
    p.add_argument("--fdr", default="bh")
    p.add_argument("--negcon-pseudo", type=int, default=6, help="DMSO wells held out per plate")
    p.add_argument("--negcon-repeats", type=int, default=5)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["default", "no_sphering"],
        help="campaign variants of benchmarks/analysis.py (VARIANTS)",
    )
    p.add_argument(
        "--sets",
        nargs="*",
        help="feature sets to score, e.g. CellProfiler weakly_supervised (default: all)",
    )
    p.add_argument(
        "--ssl-steps", type=int, default=0, help="self_supervised steps (0: as --train-steps)"
    )
    p.add_argument(
        "--no-basic",
        dest="basic",
        action="store_false",
        help="leave out the 28-feature subset (the analysis benchmark's truth-table features)",
    )
    p.add_argument(
        "--stage", choices=["all", "masks"], default="all", help="masks: only segment (cache)"
    )
    args = ap.parse_args(argv)
    {"cp": cmd_cp, "speed": cmd_speed, "io": cmd_io, "retrieval": cmd_retrieval}[args.cmd](args)


if __name__ == "__main__":
    main()
