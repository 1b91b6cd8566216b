"""Choose the inference settings of a checkpoint on training-side data, through ``Segmenter``.

Settings searched: the working scale (``zoom``: nuclei of ``zoom * 18`` model pixels instead
of the 18 the network was trained at), the foreground threshold and the seed threshold of
the deep watershed, post-processing at the input's resolution (``native_resolution``) or at the
working resolution followed by a nearest-neighbour resize of the labels, and test-time
augmentation (``tta``). The network runs once per image, zoom and TTA setting; the
post-processing variants reuse its maps.

Data: DSB2018 *training* images (never the validation split; a fixed random sample), at the
pixel size that brings their annotated median nucleus to the model's reference diameter, and
simulated fields with seeds disjoint from the benchmarks' (800000+), nuclei and whole cells
with AGP as cytoplasm. Prints one Markdown row per setting with mean F1@0.5 and DSB score
(mean over IoU 0.5:0.95 of TP / (TP + FP + FN)) per data set.

    PYTHONPATH=$PWD python benchmarks/tune_inference.py --model hcsflow/models/segmenter_v5.pt

``watershed`` chooses the deep-watershed parameters of the maps at the working resolution
instead: the network's maps are computed once per image, and the post-processing is run for
every combination of ``fg_threshold``, ``seed_threshold``, ``min_distance`` and
``seed_smoothing``, on the simulated split ``tune_postprocess`` (seed sequences ``(2027, k)``)
and DSB2018 *training* images. Prints one row per combination, sorted by the mean of nuclear
F1, cell F1 and the mean APs.

    PYTHONPATH=$PWD python benchmarks/tune_inference.py watershed --fields 4 --dsb-images 40

The data splits and the seeds reserved for test data are those of
:mod:`hcsflow.segmentation.evaluation`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018_nuclei"


def watershed(argv: list[str]) -> int:
    """``watershed``: deep-watershed parameters on maps at the working resolution."""
    parser = argparse.ArgumentParser(
        prog="tune_inference.py watershed", description=watershed.__doc__
    )
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
    from hcsflow.segmentation.evaluation import (
        dsb_split,
        median_diameter,
        read_dsb,
        simulated_split,
    )
    from hcsflow.segmentation.metrics import DEFAULT_THRESHOLDS, match_many
    from hcsflow.segmentation.postprocess import PostprocessParams, deep_watershed, nuclei_only
    from hcsflow.segmentation.preprocess import combine_channels, resize_labels

    seg = Segmenter.load(args.model, device="cpu")
    sim = []
    for f in simulated_split("tune_postprocess", args.fields, (args.size, args.size), 0.65):
        cyto = combine_channels([f.image[1], f.image[3]])
        sim.append((seg.maps(f.image[0], cyto, 0.65).maps, f.nuclei, f.cells))
    dsb = []
    ids = dsb_split(DSB, "train")[:: max(1, 365 // args.dsb_images)]
    train_px = float(seg.meta.get("nuclear_diameter_px", 18.0))
    for i in ids[: args.dsb_images]:
        img, lab = read_dsb(DSB, i)
        d = median_diameter(lab)
        maps = seg.maps(img, None, seg.model_mpp * train_px / d).maps
        dsb.append((maps, resize_labels(lab, maps.shape[-2:])))

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["watershed"]:
        return watershed(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="'tune_inference.py watershed --help': the deep-watershed parameter search",
    )
    parser.add_argument("--model", default=str(ROOT / "hcsflow" / "models" / "segmenter_v5.pt"))
    parser.add_argument("--dsb", default=str(DSB))
    parser.add_argument("--dsb-images", type=int, default=60)
    parser.add_argument("--sample-seed", type=int, default=1)
    parser.add_argument("--sim-fields", type=int, default=3)
    parser.add_argument("--sim-seed", type=int, default=None, help="default: split 'tune'")
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0, 22 / 18, 26 / 18])
    parser.add_argument("--fg-thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--seed-thresholds", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--native", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tta", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--grid",
        nargs="*",
        default=[],
        metavar="KEY=V1,V2",
        help="further post-processing settings to search, e.g. min_distance=4,8 "
        "merge_dynamic=0,0.2 (PostprocessParams fields, in model pixels)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.evaluation import (
        check_training_seeds,
        dsb_split,
        median_diameter,
        read_dsb,
        simulated_split,
    )
    from hcsflow.segmentation.metrics import dsb_score, f1_at
    from hcsflow.segmentation.model import load_checkpoint
    from hcsflow.segmentation.setpost import parse_settings

    grid_keys, grid_values = [], []
    for item in args.grid:
        key, _, values = item.partition("=")
        grid_keys.append(key)
        try:
            grid_values.append(
                [parse_settings([f"{key}={v}"], "--grid")[key] for v in values.split(",")]
            )
        except ValueError as exc:
            parser.error(str(exc))

    model, meta = load_checkpoint(args.model)
    base = Segmenter.load(args.model, device="cpu", threads=args.threads)
    ref = float(meta["nuclear_diameter_px"])
    ids = dsb_split(args.dsb, "train")
    rng = np.random.default_rng(args.sample_seed)
    # (name, nuclear, cytoplasm, image_mpp, truth nuclei, truth cells or None)
    cases = []
    for i in sorted(rng.choice(ids, size=min(args.dsb_images, len(ids)), replace=False)):
        img, lab = read_dsb(args.dsb, i)
        cases.append(("dsb", img, None, base.model_mpp * ref / median_diameter(lab), lab, None))
    if args.sim_seed is not None:
        check_training_seeds(args.sim_seed, args.sim_fields)
    fields = simulated_split("tune", args.sim_fields, (512, 512), 0.65, first=args.sim_seed)
    for f in fields:
        cases.append(("sim", f.image[0], f.image[3], 0.65, f.nuclei, f.cells))

    header = "| zoom | tta | native | fg_threshold | seed_threshold "
    header += "".join(f"| {k} " for k in grid_keys)
    header += "| DSB-train F1 | DSB-train score | sim nuclei F1 | sim nuclei score "
    header += "| sim cells F1 | sim cells score |"
    print(header)
    print("|" + "---|" * (11 + len(grid_keys)))
    t0 = time.time()
    for zoom, tta in itertools.product(args.zooms, args.tta):
        seg = Segmenter(model, meta, device="cpu", zoom=zoom, tta=bool(tta))
        cached = [seg.maps(nuc, cyto, mpp) for _, nuc, cyto, mpp, _, _ in cases]
        for native, ft, st, *extra in itertools.product(
            args.native, args.fg_thresholds, args.seed_thresholds, *grid_values
        ):
            post = dict(meta.get("postprocess", {}), fg_threshold=ft, seed_threshold=st)
            post.update(zip(grid_keys, extra, strict=True))
            variant = Segmenter(
                model,
                meta,
                device="cpu",
                zoom=zoom,
                native_resolution=bool(native),
                postprocess=post,
            )
            scores: dict[str, list[tuple[float, float]]] = {"dsb": [], "simn": [], "simc": []}
            for (name, *_, tn, tc), maps in zip(cases, cached, strict=True):
                pn, pc, _ = variant.instances(maps)
                if name == "dsb":
                    scores["dsb"].append((f1_at(pn, tn), dsb_score(pn, tn)))
                else:
                    scores["simn"].append((f1_at(pn, tn), dsb_score(pn, tn)))
                    scores["simc"].append((f1_at(pc, tc), dsb_score(pc, tc)))
            row = [f"{zoom:.3f}", str(tta), str(native), f"{ft}", f"{st}", *map(str, extra)]
            for key in ("dsb", "simn", "simc"):
                v = np.array(scores[key]) if scores[key] else np.full((1, 2), np.nan)
                row += [f"{v[:, 0].mean():.3f}", f"{v[:, 1].mean():.3f}"]
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
