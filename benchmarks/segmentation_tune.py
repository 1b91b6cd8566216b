"""Choose the deep-watershed parameters on validation data (never on the test data).

The network's maps are computed once per image; the post-processing is then run for every
combination of ``fg_threshold``, ``seed_threshold``, ``min_distance`` and ``seed_smoothing``.
Validation data: simulated fields with seed sequences ``(2027, k)`` (the benchmark's test
fields use ``(2026, k)``) and DSB2018 *training* images (the validation split is the
benchmark's test set). Prints one row per combination, sorted by the mean of nuclear F1, cell
F1 and the mean APs.

Usage::

    PYTHONPATH=. python benchmarks/segmentation_tune.py --fields 4 --dsb-images 40
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "data" / "dsb2018_nuclei"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=540)
    parser.add_argument("--dsb-images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fg", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--seed-threshold", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--min-distance", type=int, nargs="+", default=[5, 7, 9, 11])
    parser.add_argument("--smoothing", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.metrics import DEFAULT_THRESHOLDS, match_many
    from hcsflow.segmentation.postprocess import PostprocessParams, deep_watershed
    from hcsflow.segmentation.preprocess import combine_channels
    from hcsflow.segmentation.train import is_dsb_validation, median_diameter, read_dsb
    from hcsflow.simulate import random_appearance, simulate_field

    seg = Segmenter.load(args.model, device="cpu")
    sim = []
    for k in range(args.fields):
        rng = np.random.default_rng((2027, k))
        f = simulate_field(
            (2027, k), (args.size, args.size), 0.65, appearance=random_appearance(rng)
        )
        cyto = combine_channels([f.image[1], f.image[3]])
        x = seg._model_input(f.image[0], cyto, 0.65)
        sim.append((seg.predict_maps([x])[0], f.nuclei, f.cells))
    dsb = []
    ids = sorted(p.stem for p in (DSB / "images").glob("*.png"))
    ids = [i for i in ids if not is_dsb_validation(i)][:: max(1, 365 // args.dsb_images)]
    train_px = float(seg.meta.get("nuclear_diameter_px", 18.0))
    for i in ids[: args.dsb_images]:
        img, lab = read_dsb(DSB, i)
        d = median_diameter(lab)
        x = seg._model_input(img, None, seg.model_mpp * train_px / d)
        maps = seg.predict_maps([x])[0]
        from hcsflow.segmentation.segmenter import resize_labels

        dsb.append((maps, resize_labels(lab, x.shape[-2:])))

    def score(pred, true):
        ms = match_many(pred, true, DEFAULT_THRESHOLDS)
        return np.array([[m.tp, m.fp, m.fn] for m in ms], float)

    def summary(counts):
        tp, fp, fn = np.sum(counts, axis=0).T
        return 2 * tp[0] / (2 * tp[0] + fp[0] + fn[0]), float(np.mean(tp / (tp + fp + fn)))

    rows = []
    grid = itertools.product(args.fg, args.seed_threshold, args.min_distance, args.smoothing)
    for fg, st, md, sm in grid:
        p = PostprocessParams(
            fg_threshold=fg, seed_threshold=st, min_distance=md, seed_smoothing=sm
        )
        sn, sc, dn = [], [], []
        for maps, nuc, cells in sim:
            n, c, _ = deep_watershed(maps, p)
            sn.append(score(n, nuc))
            sc.append(score(c, cells))
        for maps, lab in dsb:
            from hcsflow.segmentation.postprocess import nuclei_only

            n, _, _ = nuclei_only(maps[0], maps[2], p, grow=0)
            dn.append(score(n, lab))
        vals = [*summary(sn), *summary(sc), *summary(dn)]
        rows.append((float(np.mean(vals)), fg, st, md, sm, *vals))
    rows.sort(reverse=True)
    print(
        f"validation: {len(sim)} simulated fields of {args.size} px, {len(dsb)} DSB2018 "
        "training images\n"
    )
    print(
        "| mean | fg_threshold | seed_threshold | min_distance | seed_smoothing | sim nuclei F1 "
        "| sim nuclei AP | sim cells F1 | sim cells AP | DSB nuclei F1 | DSB nuclei AP |"
    )
    print("|" + "---|" * 11)
    for r in rows[:15]:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
