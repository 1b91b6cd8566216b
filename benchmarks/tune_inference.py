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
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018_nuclei"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "hcsflow" / "models" / "segmenter_v5.pt"))
    parser.add_argument("--dsb", default=str(DSB))
    parser.add_argument("--dsb-images", type=int, default=60)
    parser.add_argument("--sample-seed", type=int, default=1)
    parser.add_argument("--sim-fields", type=int, default=3)
    parser.add_argument("--sim-seed", type=int, default=800_000)
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
    from hcsflow.segmentation.metrics import dsb_score, f1_at
    from hcsflow.segmentation.model import load_checkpoint
    from hcsflow.segmentation.setpost import parse_settings
    from hcsflow.segmentation.train import is_dsb_validation, list_dsb, median_diameter, read_dsb
    from hcsflow.simulate import random_appearance, simulate_field

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
    ids = [i for i in list_dsb(args.dsb) if not is_dsb_validation(i)]
    rng = np.random.default_rng(args.sample_seed)
    # (name, nuclear, cytoplasm, image_mpp, truth nuclei, truth cells or None)
    cases = []
    for i in sorted(rng.choice(ids, size=min(args.dsb_images, len(ids)), replace=False)):
        img, lab = read_dsb(args.dsb, i)
        cases.append(("dsb", img, None, base.model_mpp * ref / median_diameter(lab), lab, None))
    for k in range(args.sim_fields):
        s = args.sim_seed + k
        look = random_appearance(np.random.default_rng(s))
        f = simulate_field(s, (512, 512), 0.65, appearance=look)
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
        cached = []
        for _, nuc, cyto, mpp, _, _ in cases:
            x, xn = seg._model_input(nuc, cyto, mpp, keep_native=True)
            cached.append((x, xn, seg.predict_maps([x])[0]))
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
            for (name, nuc, cyto, mpp, tn, tc), (x, xn, maps) in zip(cases, cached, strict=True):
                pn, pc, _ = variant._postprocess(maps, x[0], xn, cyto is None, nuc.shape, mpp)
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
