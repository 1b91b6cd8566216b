"""Choose the deep-watershed seed parameters of a checkpoint on training images.

The network runs once per image; the nuclear post-processing
(:func:`hcsflow.segmentation.postprocess.nuclei_from_maps`) is then repeated over a grid of
``min_distance`` (in model pixels), ``seed_threshold`` and ``fg_threshold``. Images come from
the DSB2018 *training* split (never the validation split) and from simulated fields with
seeds disjoint from the benchmark's, so that the validation figures stay unbiased. Prints one
Markdown row per setting with the mean F1@0.5 and DSB score of each data set.

    PYTHONPATH=$PWD python benchmarks/tune_postprocess.py --model models/segmenter_v4.pt
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018_nuclei"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "segmenter_v4.pt"))
    parser.add_argument("--dsb", default=str(DSB))
    parser.add_argument("--dsb-images", type=int, default=40)
    parser.add_argument("--sim-fields", type=int, default=3)
    parser.add_argument("--sim-seed", type=int, default=800_000)
    parser.add_argument("--min-distances", type=int, nargs="+", default=[3, 4, 5, 6, 8])
    parser.add_argument("--seed-thresholds", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--fg-thresholds", type=float, nargs="+", default=[0.4, 0.5])
    args = parser.parse_args(argv)

    import torch

    from hcsflow.segmentation.metrics import dsb_score, f1_at
    from hcsflow.segmentation.model import load_checkpoint
    from hcsflow.segmentation.postprocess import PostprocessParams, nuclei_from_maps
    from hcsflow.segmentation.preprocess import normalize
    from hcsflow.segmentation.train import (
        is_dsb_validation,
        list_dsb,
        median_diameter,
        predict_maps,
        read_dsb,
        rescale_image,
        rescale_labels,
    )
    from hcsflow.simulate import random_appearance, simulate_field

    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.model)
    ref = float(meta["nuclear_diameter_px"])
    norm = meta["normalization"]
    cases: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"dsb_train": [], "sim": []}
    ids = [i for i in list_dsb(args.dsb) if not is_dsb_validation(i)]
    rng = np.random.default_rng(0)
    for i in sorted(rng.choice(ids, size=min(args.dsb_images, len(ids)), replace=False)):
        img, lab = read_dsb(args.dsb, i)
        x = rescale_image(normalize(img, **norm), ref / median_diameter(lab))
        maps = predict_maps(model, np.stack([x, np.zeros_like(x)]))
        cases["dsb_train"].append((maps, rescale_labels(lab, x.shape)))
    for k in range(args.sim_fields):
        s = args.sim_seed + k
        f = simulate_field(
            s, (512, 512), meta["model_mpp"], appearance=random_appearance(np.random.default_rng(s))
        )
        x = np.stack([normalize(f.image[0], **norm), normalize(f.image[3], **norm)])
        cases["sim"].append((predict_maps(model, x), f.nuclei.astype(np.int32)))
    print(
        "| min_distance | seed_threshold | fg_threshold | DSB-train F1 | DSB-train score "
        "| sim F1 | sim score |"
    )
    print("|---|---|---|---|---|---|---|")
    for md, st, ft in itertools.product(
        args.min_distances, args.seed_thresholds, args.fg_thresholds
    ):
        p = PostprocessParams(
            fg_threshold=ft, seed_threshold=st, min_distance=md, min_nucleus_size=20
        )
        row = [str(md), str(st), str(ft)]
        for key in ("dsb_train", "sim"):
            f1s, scores = [], []
            for maps, lab in cases[key]:
                pred, _ = nuclei_from_maps(maps[0], maps[2], p)
                f1s.append(f1_at(pred, lab))
                scores.append(dsb_score(pred, lab))
            row += [f"{np.mean(f1s):.3f}", f"{np.mean(scores):.3f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
