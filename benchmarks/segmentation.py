"""Segmentation quality and speed: deep vs classical, simulated test fields and real nuclei.

Prints Markdown tables:

1. Simulated test fields (seeds and appearances never used for training: seed sequences
   ``(2026, k)``, appearance drawn from their own generator, density 0.6-1.6): F1 at IoU 0.5 and
   mean AP over IoU 0.5:0.95 (``TP / (TP + FP + FN)``, counts pooled over fields) for nuclei
   and whole cells, deep vs classical, and F1@0.5 and mean AP over IoU 0.5:0.95 on the touching
   cells (true cells sharing a border with another cell).
2. Time per 1080 x 1080 field on CPU with ``--threads`` threads, split into network
   (normalization, rescaling, inference, blending) and post-processing, end to end (wall
   clock), and the CPU time the process used (summed over threads; on a busy machine it is
   the better guide to what a quiet machine does); the same on CUDA when a GPU is present.
3. The nuclear part on the real DSB2018 validation split (the ids recorded in the checkpoint's
   meta): mean per-image F1@0.5 and DSB score, with the scale given by the annotations
   (``oracle``: nuclei rescaled to the training diameter) and estimated from the image
   (``image_mpp=None``); and, at the annotated scale, F1@0.5 and mean AP over IoU 0.5:0.95 on
   the touching nuclei (true nuclei sharing a border with another one; counts pooled).

Usage::

    PYTHONPATH=. python benchmarks/segmentation.py --fields 8 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018_nuclei"


def _scores(pred, true, acc: dict, key: str) -> None:
    from hcsflow.segmentation.metrics import DEFAULT_THRESHOLDS, match_many

    ms = match_many(pred, true, DEFAULT_THRESHOLDS)
    acc.setdefault(key, []).append([(m.tp, m.fp, m.fn) for m in ms])


def _f1_map(rows: list[list[tuple[int, int, int]]]) -> tuple[float, float]:
    arr = np.asarray(rows, dtype=float)  # fields x thresholds x (tp, fp, fn)
    tp, fp, fn = arr.sum(axis=0).T
    f1 = 2 * tp[0] / (2 * tp[0] + fp[0] + fn[0])
    ap = np.mean(tp / (tp + fp + fn))
    return float(f1), float(ap)


def _subset_rows(pred, true, subset) -> list[tuple[int, int, int]]:
    """(tp, fp, fn) of a subset of the true objects at each IoU threshold 0.50:0.95."""
    from hcsflow.segmentation.metrics import DEFAULT_THRESHOLDS, subset_counts

    rows = []
    for t in DEFAULT_THRESHOLDS:
        c = subset_counts(pred, true, subset, float(t))
        rows.append((c["tp"], c["fp"], c["fn"]))
    return rows


def simulated_fields(n: int, size: int, mpp: float):
    from hcsflow.segmentation.evaluation import simulated_split

    # every 4th field has the default look; densities 0.6-1.6
    yield from simulated_split("test", n, (size, size), mpp)


def cytoplasm_of(image: np.ndarray) -> np.ndarray:
    """Cytoplasm input as the workflow's default channels give it: ER and AGP combined."""
    from hcsflow.segmentation.preprocess import combine_channels

    return combine_channels([image[1], image[3]])


def bench_simulated(segs: dict, n: int, size: int, mpp: float) -> None:
    from hcsflow.segmentation.metrics import touching_labels

    acc: dict = {}
    touch: dict = {}
    n_cells = n_touch = 0
    for f in simulated_fields(n, size, mpp):
        cyto = cytoplasm_of(f.image)
        t_ids = touching_labels(f.cells)
        n_cells += int(f.cells.max())
        n_touch += t_ids.size
        for name, seg in segs.items():
            nuc, cells = seg.predict(f.image[0], cyto, mpp)
            _scores(nuc, f.nuclei, acc, (name, "nuclei"))
            _scores(cells, f.cells, acc, (name, "cells"))
            touch.setdefault(name, []).append(_subset_rows(cells, f.cells, t_ids))
            nuc_only, _ = seg.predict(f.image[0], None, mpp)
            _scores(nuc_only, f.nuclei, acc, (name, "nuclei, no cytoplasm input"))
    print(
        f"\n### Simulated test fields: {n} fields of {size} x {size} at {mpp} µm/px, "
        f"{n_cells} cells, {n_touch} touching\n"
    )
    print("| method | objects | F1@0.5 | mean AP 0.5:0.95 |")
    print("|---|---|---|---|")
    for (name, what), rows in acc.items():
        f1, ap = _f1_map(rows)
        print(f"| {name} | {what} | {f1:.3f} | {ap:.3f} |")
    for name, rows in touch.items():
        f1, ap = _f1_map(rows)
        print(f"| {name} | touching cells | {f1:.3f} | {ap:.3f} |")


def bench_speed(segs: dict, size: int, mpp: float, repeats: int) -> None:
    import torch

    from hcsflow.simulate import simulate_field

    f = simulate_field((2026, 999), (size, size), mpp)
    cyto = cytoplasm_of(f.image)
    print(f"\n### Time per {size} x {size} field (median of {repeats})\n")
    print(
        "| method | device | threads | network s | post-processing s | end to end s | CPU time s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seg in segs.items():
        devices = ["cpu"]
        if name.startswith("deep") and torch.cuda.is_available():
            devices.append("cuda")
        for dev in devices:
            if dev != seg.device:
                seg.model.to(dev)
                seg.device = dev
            seg.predict_with_qc(f.image[0], cyto, mpp)  # warm-up
            net, post, tot, cpu = [], [], [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                res = seg.predict_with_qc(f.image[0], cyto, mpp)
                if dev == "cuda":
                    torch.cuda.synchronize()
                tot.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                net.append(res.timings["network"])
                post.append(res.timings["postprocess"])
            print(
                f"| {name} | {dev} | {torch.get_num_threads()} | {np.median(net):.2f} | "
                f"{np.median(post):.2f} | {np.median(tot):.2f} | {np.median(cpu):.2f} |"
            )
            if dev == "cuda":
                seg.model.to("cpu")
                seg.device = "cpu"
    if not torch.cuda.is_available():
        print("| deep | cuda | | (no GPU on this machine) | | | |")


def bench_resolution(model, size: int, mpps: list[float], repeats: int) -> None:
    """Post-processing at the input's resolution vs at the model's grid, for fields whose
    pixel size differs from the model's (the same simulated image, declared at ``mpps``)."""
    from hcsflow.segmentation import Segmenter
    from hcsflow.simulate import simulate_field

    f = simulate_field((2026, 999), (size, size), 0.65)
    cyto = cytoplasm_of(f.image)
    segs = {
        "input's resolution": Segmenter.load(model, device="cpu"),
        "model grid, labels resized": Segmenter.load(model, device="cpu", native_resolution=False),
    }
    print(f"\n### Post-processing grid, {size} x {size} field declared at other pixel sizes\n")
    print("| image µm/px | watershed on | post-processing s | end to end s |")
    print("|---|---|---|---|")
    for mpp in mpps:
        for name, seg in segs.items():
            seg.predict_with_qc(f.image[0], cyto, mpp)  # warm-up
            post, tot = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = seg.predict_with_qc(f.image[0], cyto, mpp)
                tot.append(time.perf_counter() - t0)
                post.append(res.timings["postprocess"])
            print(f"| {mpp} | {name} | {np.median(post):.2f} | {np.median(tot):.2f} |")


def _val_ids(meta: dict) -> list[str]:
    stack = [meta]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "val_ids" in node and isinstance(node["val_ids"], list):
                return [str(i) for i in node["val_ids"]]
            stack.extend(node.values())
    from hcsflow.segmentation.evaluation import dsb_split

    return dsb_split(DSB, "validation")


def bench_dsb(segs: dict, meta: dict) -> None:
    from hcsflow.segmentation.evaluation import median_diameter, read_dsb
    from hcsflow.segmentation.metrics import dsb_score, f1_at, touching_labels

    if not DSB.is_dir():
        print(f"\n(DSB2018 data not found at {DSB}: real-nuclei table skipped)")
        return
    ids = _val_ids(meta)
    train_px = float(meta.get("nuclear_diameter_px", 18.0))
    model_mpp = float(meta.get("model_mpp", 0.65))
    scores: dict = {}
    touch: dict = {}
    n_touch = 0
    for i in ids:
        img, lab = read_dsb(DSB, i)
        d = median_diameter(lab)
        if not np.isfinite(d):
            continue
        t_ids = touching_labels(lab)
        n_touch += t_ids.size
        for name, seg in segs.items():
            ref_um = train_px * model_mpp if seg.method == "deep" else seg.nuclear_diameter_um
            for scale, mpp in (("oracle", ref_um / d), ("estimated", None)):
                nuc, _ = seg.predict(img, None, mpp)
                s = scores.setdefault((name, scale), [[], []])
                s[0].append(f1_at(nuc, lab))
                s[1].append(dsb_score(nuc, lab))
                if scale == "oracle" and t_ids.size:
                    touch.setdefault(name, []).append(_subset_rows(nuc, lab, t_ids))
    print(f"\n### DSB2018 validation split: {len(ids)} images (real nuclei, nuclear input only)\n")
    print("| method | scale | F1@0.5 | DSB score |")
    print("|---|---|---|---|")
    for (name, scale), (f1, dsb) in scores.items():
        print(f"| {name} | {scale} | {np.mean(f1):.3f} | {np.mean(dsb):.3f} |")
    print(f"\n{n_touch} touching nuclei (oracle scale; counts pooled over images)\n")
    print("| method | objects | F1@0.5 | mean AP 0.5:0.95 |")
    print("|---|---|---|---|")
    for name, rows in touch.items():
        f1, ap = _f1_map(rows)
        print(f"| {name} | touching nuclei | {f1:.3f} | {ap:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--fields", type=int, default=8, help="simulated test fields")
    parser.add_argument("--size", type=int, default=1080, help="field side (pixels)")
    parser.add_argument("--mpp", type=float, default=0.65, help="µm/px of the simulated fields")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sim", "speed", "dsb"])
    parser.add_argument(
        "--tta", action="store_true", help="add the deep method with test-time augmentation"
    )
    parser.add_argument(
        "--post",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="deep post-processing overrides, e.g. fg_threshold=0.4",
    )
    parser.add_argument(
        "--resolution-mpps",
        type=float,
        nargs="*",
        default=[0.325, 1.3],
        help="pixel sizes of the post-processing grid timing (none: skipped)",
    )
    parser.add_argument(
        "--label-resize",
        action="store_true",
        help="deep: watershed at the model's resolution, labels resized (not at the input's)",
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from hcsflow.segmentation import Segmenter

    post = {}
    for item in args.post:
        key, value = item.split("=", 1)
        post[key] = float(value) if "." in value else int(value)
    opts = {"postprocess": post, "native_resolution": not args.label_resize}
    deep = Segmenter.load(args.model, device="cpu", **opts)
    segs = {"deep": deep}
    if args.tta:
        segs["deep, tta"] = Segmenter.load(args.model, device="cpu", tta=True, **opts)
    segs["classical"] = Segmenter.load(method="classical")
    print(f"model: {deep.meta.get('path')} (model_mpp {deep.model_mpp}); {deep.post_params}")
    print(f"native_resolution {deep.native_resolution}, zoom {deep.zoom}")
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    if "sim" not in args.skip:
        bench_simulated(segs, args.fields, args.size, args.mpp)
    if "speed" not in args.skip:
        bench_speed(segs, args.size, args.mpp, args.repeats)
        if args.resolution_mpps:
            bench_resolution(args.model, args.size, args.resolution_mpps, args.repeats)
    if "dsb" not in args.skip:
        bench_dsb(segs, deep.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
