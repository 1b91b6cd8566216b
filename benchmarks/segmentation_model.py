"""Validation of a segmentation checkpoint through the public ``Segmenter`` API.

Prints one Markdown table:

- the real nuclei of the fixed DSB2018 validation split (ids with
  ``int(sha1(id)[:8], 16) % 100 < 15``), nuclei-only input, once with the pixel size that
  brings the annotated median nucleus to the model's reference diameter ("given scale") and
  once with the pixel size estimated from the image (``image_mpp=None``);
- simulated Cell Painting fields never used in training (seeds from ``--sim-seed``, random
  appearance), nuclei and whole cells, with the AGP channel as cytoplasm and nuclei-only.

Scores are means over images of F1 at IoU 0.5 and of the DSB score (mean over IoU 0.50:0.95 of
TP / (TP + FP + FN)), from :mod:`hcsflow.segmentation.metrics`.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/segmentation_model.py --model hcsflow/models/segmenter_v5.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hcsflow.segmentation.evaluation import SIM_SPLITS

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018_nuclei"


def _scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    from hcsflow.segmentation.metrics import dsb_score, f1_at

    return f1_at(pred, true, 0.5), dsb_score(pred, true)


def evaluate_dsb(seg, root: Path, estimate: bool, limit: int | None = None) -> dict[str, float]:
    """Mean F1@0.5 and DSB score over the DSB2018 validation split."""
    from hcsflow.segmentation.evaluation import dsb_split, median_diameter, read_dsb

    ref = float(seg.meta["nuclear_diameter_px"])
    f1s, dsbs = [], []
    for i in dsb_split(root, "validation")[:limit]:
        img, lab = read_dsb(root, i)
        mpp = None if estimate else seg.model_mpp * ref / median_diameter(lab)
        nuclei, _ = seg.predict(img, None, image_mpp=mpp)
        f1, dsb = _scores(nuclei, lab)
        f1s.append(f1)
        dsbs.append(dsb)
    return {"f1_05": float(np.mean(f1s)), "dsb": float(np.mean(dsbs)), "n": len(f1s)}


def evaluate_sim(seg, n: int, seed: int, shape: tuple[int, int], mpp: float) -> dict[str, dict]:
    """Nuclei and cells on simulated fields, with AGP as cytoplasm and without cytoplasm."""
    from hcsflow.segmentation.evaluation import simulated_split

    acc: dict[str, list[tuple[float, float]]] = {
        "nuclei": [],
        "cells": [],
        "nuclei (no cytoplasm)": [],
    }
    for f in simulated_split("model_test", n, shape, mpp, first=seed):
        nuc, cel = f.image[0], f.image[3]
        pn, pc = seg.predict(nuc, cel, image_mpp=mpp)
        acc["nuclei"].append(_scores(pn, f.nuclei))
        acc["cells"].append(_scores(pc, f.cells))
        pn0, _ = seg.predict(nuc, None, image_mpp=mpp)
        acc["nuclei (no cytoplasm)"].append(_scores(pn0, f.nuclei))
    return {
        k: {
            "f1_05": float(np.mean([a for a, _ in v])),
            "dsb": float(np.mean([b for _, b in v])),
            "n": n,
        }
        for k, v in acc.items()
    }


def update_card(path: Path, rows: list, argv: list[str] | None) -> None:
    """Record the benchmark table in the checkpoint's card (weights unchanged)."""
    import shlex
    import sys

    from hcsflow.segmentation.commands import write_card
    from hcsflow.segmentation.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(path)
    argv = sys.argv[1:] if argv is None else argv
    meta["card"]["benchmark"] = {
        "rows": [
            {"data": d, "objects": o, "f1_05": r["f1_05"], "dsb": r["dsb"], "n": r["n"]}
            for d, o, r in rows
        ],
        "command": "python benchmarks/segmentation_model.py "
        + " ".join(shlex.quote(a) for a in argv),
    }
    save_checkpoint(path, model, meta)
    write_card(path.with_suffix(".md"), meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "hcsflow" / "models" / "segmenter_v5.pt"))
    parser.add_argument("--dsb", default=str(DSB))
    parser.add_argument("--sim-fields", type=int, default=8)
    parser.add_argument(
        "--sim-seed", type=int, default=SIM_SPLITS["model_test"], help="first test seed"
    )
    parser.add_argument("--sim-shape", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--sim-mpp", type=float, default=0.65)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N validation images only")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation (8 flips/rotations)"
    )
    parser.add_argument(
        "--label-resize",
        action="store_true",
        help="watershed at the model's resolution and labels resized (instead of at the input's)",
    )
    parser.add_argument(
        "--zoom", type=float, default=None, help="working scale (default: checkpoint)"
    )
    parser.add_argument(
        "--post",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="post-processing overrides, e.g. fg_threshold=0.4",
    )
    parser.add_argument(
        "--update-card",
        action="store_true",
        help="store the table in the checkpoint's card and rewrite its Markdown card (.md)",
    )
    args = parser.parse_args(argv)

    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.model import load_checkpoint

    # the checkpoint's own post-processing settings (seed spacing etc.), when it has them
    post = dict(load_checkpoint(args.model)[1].get("postprocess", {}))
    for item in args.post:
        key, value = item.split("=", 1)
        post[key] = float(value) if "." in value else int(value)
    seg = Segmenter.load(
        args.model,
        device="cpu",
        threads=args.threads,
        postprocess=post,
        tta=args.tta,
        native_resolution=not args.label_resize,
        zoom=args.zoom,
    )
    t0 = time.time()
    rows = []
    res: dict[str, dict] = {}
    if Path(args.dsb).is_dir():
        res["dsb_given"] = evaluate_dsb(seg, Path(args.dsb), estimate=False, limit=args.limit)
        res["dsb_estimated"] = evaluate_dsb(seg, Path(args.dsb), estimate=True, limit=args.limit)
        rows.append(("DSB2018 validation, given scale", "nuclei", res["dsb_given"]))
        rows.append(("DSB2018 validation, estimated scale", "nuclei", res["dsb_estimated"]))
    if args.sim_fields:
        sim = evaluate_sim(seg, args.sim_fields, args.sim_seed, tuple(args.sim_shape), args.sim_mpp)
        res["sim"] = sim
        for k, v in sim.items():
            rows.append((f"simulated (seeds {args.sim_seed}+)", k, v))
    print(
        f"model: {args.model}; postprocess {post}; tta {seg.tta}; "
        f"native_resolution {seg.native_resolution}; zoom {seg.zoom:.3f}"
    )
    print("| data | objects | F1@0.5 | DSB score | images |")
    print("|---|---|---|---|---|")
    for data, obj, r in rows:
        print(f"| {data} | {obj} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.update_card:
        update_card(Path(args.model), rows, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
