"""Speed of the per-cell embedders: seconds per field of 200 cells.

Simulated five-channel fields (``hcsflow.simulate.simulate_field``, true masks), corrected for
illumination, embedded with :meth:`hcsflow.features.embed.Embedder.embed` (crop extraction
included) by

- ``imagenet`` (EfficientNet-lite0 per channel, D = 1280 x 5) at a 62.4 µm crop (96 px at
  0.65 µm/px) and at a 41.6 µm crop (64 px);
- the trained small CNN (``CellCNN``, default architecture: crops of 62.4 µm resized to 64 px),
  with random weights unless ``--model`` names a checkpoint (speed does not depend on them);

in float32 and bfloat16 autocast, with and without channels-last activations. Times are the
best of ``--repeats`` runs, scaled to 200 cells (bfloat16, very slow on CPUs without native
support, is timed on the first ``--bf16-cells`` cells of each field); ``cos`` is the smallest
cosine similarity of a cell's embedding to its float32, contiguous-layout embedding.

    OMP_NUM_THREADS=2 python benchmarks/embed_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hcsflow.features.embed import Embedder
from hcsflow.simulate import simulate_field


def untrained_checkpoint(path: Path, channels: int) -> Path:
    """Write a default-architecture CellCNN with random weights as a checkpoint."""
    from hcsflow.features.embed_nets import CellCNN
    from hcsflow.features.embed_train import DEFAULT_ARCH, save_embedder

    torch.manual_seed(0)
    model = CellCNN(channels, **{k: DEFAULT_ARCH[k] for k in ("widths", "blocks", "dim")})
    model.eval()
    config = {
        "name": "cellcnn-untrained",
        "arch": model.arch,
        "normalization": {"mean": [0.05] * channels, "std": [0.05] * channels},
        "crop_um": 62.4,
        "crop_px": 96,
        "image_mpp": 0.65,
        "input_px": 64,
        "method": "none",
    }
    return save_embedder({"state_dict": model.state_dict(), "config": config}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fields", type=int, default=1, help="simulated 1080^2 fields")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="trained checkpoint (default: random)")
    parser.add_argument("--skip-imagenet", action="store_true")
    parser.add_argument("--bf16-cells", type=int, default=16, help="cells per field timed in bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fields = []
    for seed in range(args.fields):
        f = simulate_field(1000 + seed, shape=(1080, 1080))
        image = ((f.image - f.darkfield) / f.flatfield / 65535).astype(np.float32)
        fields.append((image, f.nuclei.astype(np.int32), f.cells.astype(np.int32)))
    n_cells = sum(int(c.max()) for _, _, c in fields)

    tmp = tempfile.TemporaryDirectory()
    model = args.model or untrained_checkpoint(Path(tmp.name) / "cellcnn.pt", 5)
    configs = []
    if not args.skip_imagenet:
        configs += [("imagenet", 62.4), ("imagenet", 41.6)]
    configs += [(str(model), None)]

    print(
        f"torch {torch.__version__}, {args.threads} threads, {n_cells} cells in "
        f"{len(fields)} field(s) of 1080 x 1080, 5 channels; seconds scaled to 200 cells; "
        f"bf16 rows time the first {args.bf16_cells} cells of each field\n"
    )
    print("| model | crop | input px | precision | layout | s / 200 cells | cells / s | cos |")
    print("|---|---|---|---|---|---|---|---|")
    for name, crop_um in configs:
        ref = None
        for bf16, cl in ((False, False), (False, True), (True, False), (True, True)):
            emb = Embedder.load(name, crop_um=crop_um, bf16=bf16, channels_last=cl)
            subset = fields
            if bf16:  # slow where the CPU has no native bfloat16: time a few cells
                k = args.bf16_cells
                subset = [
                    (im, np.where(nu <= k, nu, 0), np.where(ce <= k, ce, 0))
                    for im, nu, ce in fields
                ]
            emb.embed(*[a[..., :200, :200] for a in subset[0]], 0.65)  # warm-up
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                outs = [emb.embed(im, nu, ce, 0.65) for im, nu, ce in subset]
                best = min(best, time.perf_counter() - t0)
            if ref is None:
                ref = outs
            cells = sum(int(np.isfinite(o).all(1).sum()) for o in outs)
            cos = []
            for o, r in zip(outs, ref, strict=True):
                r = r[: len(o)]
                ok = np.isfinite(o).all(1) & np.isfinite(r).all(1)
                cos.append(
                    (o[ok] * r[ok]).sum(1)
                    / np.linalg.norm(o[ok], axis=1)
                    / np.linalg.norm(r[ok], axis=1)
                )
            label = "imagenet" if name == "imagenet" else "CellCNN"
            px = emb.crop_px(0.65)
            inp = emb.input_px or px
            print(
                f"| {label} | {emb.crop_um:g} µm ({px} px) | {inp} | "
                f"{'bf16' if bf16 else 'fp32'} | {'channels_last' if cl else 'contiguous'} | "
                f"{best * 200 / cells:.2f} | {cells / best:.0f} | {np.concatenate(cos).min():.4f} |",
                flush=True,
            )
    tmp.cleanup()


if __name__ == "__main__":
    main()
