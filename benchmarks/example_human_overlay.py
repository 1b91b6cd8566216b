"""Segment the real ``example_human`` field (HT29 cells) and save an outline overlay.

Nuclear channel ``d0`` (Hoechst), cytoplasm ``d2`` (phalloidin). The pixel size of this field
is not recorded, so the shipped model runs with ``image_mpp=None`` (scale estimated from the
nuclei). Panels: deep model with cytoplasm (whole field and a zoom), deep model nuclei-only,
classical method. Prints the
object counts and writes ``docs/img/example_human_overlay.png``.

    PYTHONPATH=$PWD python benchmarks/example_human_overlay.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELD = ROOT.parent / "shared" / "data" / "example_human" / "AS_09125_050116030001_D03f00d"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "hcsflow" / "models" / "segmenter_v5.pt"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "example_human_overlay.png"))
    args = parser.parse_args(argv)

    from hcsflow.io import read_image
    from hcsflow.segmentation import Segmenter
    from hcsflow.segmentation.overlay import centre_crop, outline_overlay, save_overlay_figure

    dna = read_image(f"{FIELD}0.tif")
    actin = read_image(f"{FIELD}2.tif")
    from hcsflow.segmentation.model import load_checkpoint

    post = load_checkpoint(args.model)[1].get("postprocess", {})
    deep = Segmenter.load(args.model, device="cpu", threads=1, postprocess=post)
    classical = Segmenter.load(method="classical")
    panels = []
    for caption, seg, cyto in (
        ("deep, DNA + actin", deep, actin),
        ("deep, DNA only", deep, None),
        ("classical, DNA + actin", classical, actin),
    ):
        res = seg.predict_with_qc(dna, cyto, image_mpp=None)
        n = int(res.stats.n_nuclei)
        print(f"{caption}: {n} nuclei, estimated {res.image_mpp:.2f} µm/px, flags {res.flags}")
        rgb = outline_overlay(dna, cyto, res.nuclei, res.cells)
        panels.append((f"{caption}: {n} cells", rgb))
        if not panels[1:]:
            crop = centre_crop(rgb.transpose(2, 0, 1), 192).transpose(1, 2, 0)
            panels.append((f"{caption}, centre 192 px", crop))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_overlay_figure(panels, args.out, title="example_human D03 f00 (HT29)", columns=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
