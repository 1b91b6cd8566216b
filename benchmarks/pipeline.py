"""Seconds per 1080 x 1080 five-channel field for each stage of the image chain, and in total.

Simulated fields (seeds 7301.., written as zlib-compressed 16-bit TIFFs as the simulator and
most microscopes write them) are put through what the workflow's per-shard jobs run, with the
default configuration (``config/config.yaml``), illumination profiles of the simulated optics
and ``--threads`` CPU threads (torch, OpenMP, numba):

* the stages one by one: reading the five TIFFs, illumination correction of the five
  channels (``hcsflow.illumination.correct``), segmentation (the shipped network and its
  post-processing, ``Segmenter.predict_batch``), image quality (``field_quality``),
  measurement (``hcsflow.features.measure`` of the three compartments) and, with
  ``--embedding``, embedding (``Embedder.embed``);
* the jobs' own functions on the fields as one shard: ``segment_fields`` (rule ``segment``:
  read, correct, segment) and ``measure_fields`` (rule ``measure``: read, correct, quality,
  measure, embed), per field; their sum is the end-to-end figure (each job reads and corrects
  the images itself).

Each figure is the median over the fields of ``--repeats`` runs after one warm-up run (numba
kernels compiled, the model loaded); CPU seconds of the process in brackets.

    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/pipeline.py
    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python benchmarks/pipeline.py --embedding imagenet
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from features import (  # noqa: E402
    CHANNELS,
    IMAGE_MPP,
    default_config,
    default_params,
    load_embedder,
    markdown,
    set_torch_threads,
)

SEEDS = 7301
#: goal of the end-to-end figure (seconds per 1080 x 1080 five-channel field on 2 CPU threads)
GOAL_TOTAL_S = 3.5
ROLES = {"DNA": "nuclear", "ER": "cytoplasm", "RNA": "other", "AGP": "membrane", "Mito": "other"}


def write_fields(workdir: Path, n: int, size: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Simulate ``n`` fields, write them as TIFFs; return their manifest and illumination.

    Returns
    -------
    manifest : DataFrame
        One row per field (well ``A01``.., site 1) with ``FileName_``/``PathName_`` columns.
    illumination : dict of channel name to (flat, dark)
        The simulated optics' profiles, shape (size, size).
    """
    import tifffile

    from hcsflow.simulate import simulate_field

    folder = workdir / f"fields-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rows, illum = [], {}
    for i in range(n):
        well = f"A{i + 1:02d}"
        names = {ch: f"F_{well}_s1_w{k + 1}.tif" for k, ch in enumerate(CHANNELS)}
        profile = folder / "illumination.npz"
        if not all((folder / name).exists() for name in names.values()) or not profile.exists():
            f = simulate_field(SEEDS + i, shape=(size, size))
            for k, ch in enumerate(CHANNELS):
                tifffile.imwrite(folder / names[ch], f.image[k], compression="zlib")
            np.savez(profile, flat=f.flatfield, dark=f.darkfield)
        rec = {"Metadata_Plate": "F", "Metadata_Well": well, "Metadata_Site": 1}
        for ch in CHANNELS:
            rec[f"FileName_{ch}"] = names[ch]
            rec[f"PathName_{ch}"] = str(folder)
        rows.append(rec)
    with np.load(folder / "illumination.npz") as z:
        illum = {
            ch: (z["flat"][k].astype(np.float32), z["dark"][k].astype(np.float32))
            for k, ch in enumerate(CHANNELS)
        }
    return pd.DataFrame(rows), illum


class Clock:
    """Wall and CPU seconds of named stages, one list per stage."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, name: str, fn: Callable[[], Any], per: int = 1) -> Any:
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.setdefault(name, []).append((time.perf_counter() - t0) / per)
        self.cpu.setdefault(name, []).append((time.process_time() - c0) / per)
        return out

    def median(self, name: str) -> tuple[float, float]:
        return float(np.median(self.wall[name])), float(np.median(self.cpu[name]))


def run_stages(
    manifest: pd.DataFrame,
    illum: dict[str, tuple[np.ndarray, np.ndarray]],
    segmenter: Any,
    params: Any,
    embedder: Any,
    clock: Clock,
    workdir: Path,
) -> None:
    """One pass of every stage over the fields, timed into ``clock``."""
    from hcsflow.features.core import measure, pair_nuclei
    from hcsflow.features.quality import field_quality
    from hcsflow.features.shard import intensity_scale, measure_fields
    from hcsflow.illumination import correct
    from hcsflow.io import MaskWriter, read_field
    from hcsflow.segmentation.preprocess import combine_channels
    from hcsflow.segmentation.shard import segment_fields

    for row in manifest.to_dict("records"):
        raw = clock.time("read 5 TIFFs", lambda row=row: read_field(row, CHANNELS))
        corr = clock.time(
            "illumination correction (5 channels)",
            lambda raw=raw: np.stack(
                [correct(raw[k], *illum[ch]) for k, ch in enumerate(CHANNELS)]
            ),
        )
        cyto = combine_channels([corr[1], corr[3]])
        (res,) = clock.time(
            "segmentation (network + post-processing)",
            lambda corr=corr, cyto=cyto: segmenter.predict_batch([(corr[0], cyto)], IMAGE_MPP),
        )
        clock.time("image quality", lambda raw=raw: field_quality(raw, CHANNELS))
        scale = np.float32(intensity_scale(raw.dtype))
        clock.time(
            "measurement (3 compartments)",
            lambda corr=corr, res=res, scale=scale: measure(
                corr * scale, res.nuclei, res.cells, CHANNELS, params
            ),
        )
        if embedder is not None:
            cells_k, nuclei_k, _ = pair_nuclei(res.nuclei, res.cells)
            clock.time(
                f"embedding ({embedder.dim} dims)",
                lambda corr=corr, c=cells_k, nk=nuclei_k: embedder.embed(corr, nk, c, IMAGE_MPP),
            )

    channels = [{"name": ch, "id": f"w{k + 1}", "role": ROLES[ch]} for k, ch in enumerate(CHANNELS)]
    seg_cfg = default_config()["segmentation"]
    masks_path = workdir / "shard.npz"
    n = len(manifest)

    def segment_job() -> None:
        with MaskWriter(masks_path) as out:
            segment_fields(
                manifest,
                channels,
                segmenter,
                IMAGE_MPP,
                illumination=illum,
                fields_per_batch=seg_cfg["fields_per_batch"],
                masks_out=out,
            )

    def measure_job() -> None:
        measure_fields(
            manifest,
            CHANNELS,
            masks_path,
            illumination=illum,
            params=params,
            embedder=embedder,
            image_mpp=IMAGE_MPP,
        )

    clock.time("job segment: segment_fields", segment_job, per=n)
    clock.time("job measure: measure_fields", measure_job, per=n)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=4, help="simulated fields")
    ap.add_argument("--size", type=int, default=1080, help="field side (pixels)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes after the warm-up")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch; set OMP too)")
    ap.add_argument(
        "--embedding",
        default="none",
        help="none, imagenet, or an embedder checkpoint (as embedding.method/checkpoint)",
    )
    ap.add_argument("--workdir", default="/tmp/hcsflow-bench-pipeline", help="cache folder")
    args = ap.parse_args(argv)
    set_torch_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    from hcsflow.segmentation.shard import segmenter_from_config

    manifest, illum = write_fields(workdir, args.fields, args.size)
    seg_cfg = dict(default_config()["segmentation"], threads=args.threads)
    segmenter = segmenter_from_config(seg_cfg)
    params = default_params()
    embedder = None if args.embedding == "none" else load_embedder(args.embedding)

    warm = Clock()
    run_stages(manifest.head(1), illum, segmenter, params, embedder, warm, workdir)
    clock = Clock()
    for _ in range(args.repeats):
        run_stages(manifest, illum, segmenter, params, embedder, clock, workdir)

    rows = []
    for name in clock.wall:
        wall, cpu = clock.median(name)
        rows.append({"stage": name, "s per field": f"{wall:.2f} ({cpu:.2f})"})
    seg_w, seg_c = clock.median("job segment: segment_fields")
    mea_w, mea_c = clock.median("job measure: measure_fields")
    rows.append(
        {
            "stage": f"**end to end** (segment + measure jobs; goal <= {GOAL_TOTAL_S} s)",
            "s per field": f"**{seg_w + mea_w:.2f}** ({seg_c + mea_c:.2f})",
        }
    )
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"\n## Image chain per {args.size} x {args.size} five-channel field ({args.fields} "
        f"simulated fields, seeds {SEEDS}..; {args.threads} torch threads, OMP_NUM_THREADS="
        f"{threads}; embedding: {args.embedding}): median wall s over fields x {args.repeats} "
        "passes after a warm-up (CPU s in brackets)\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
