"""Training the segmentation network (``hcsflow train-segmenter``).

Data sources, mixed in every batch:

``--dsb DIR``
    The DSB2018 nuclei (``DIR/images/<id>.png`` uint8 + ``DIR/labels/<id>.png`` uint16
    instance labels; nuclei only, no cytoplasm). Their pixel size is unknown, so each image is
    rescaled so that its median nuclear diameter (equivalent-circle, from the labels) becomes
    ``--nuclear-diameter`` model pixels. The validation split is fixed by the image id: an id
    is held out when ``int(sha1(id)[:8], 16) % 100 < 15`` (about 15 %), whatever the seed.
``--sim N``
    ``N`` simulated Cell Painting fields (:func:`hcsflow.simulate.simulate_field`, each with a
    random appearance) at ``--sim-mpp`` µm/px, rescaled to the model resolution. Nuclear input:
    the DNA channel; cytoplasm input: one of ER, RNA, AGP, Mito or the mean of two, drawn per
    sample; with probability ``--p-no-cyto`` the cytoplasm is blanked (all zeros) and the cell
    heads are left unsupervised, so that nuclei-only input works.
``--user DIR`` (repeatable, with ``--user-mpp``)
    A folder of annotated fields, either ``<name>.npz`` files holding ``nuclear`` (H, W),
    optional ``cytoplasm`` (H, W), ``nuclei`` (H, W) and optional ``cells`` (H, W) label
    arrays (and optionally a scalar ``mpp``), or TIFF sets ``<name>_nuclear.tif``,
    ``<name>_cytoplasm.tif`` (optional), ``<name>_nuclei.tif``, ``<name>_cells.tif``
    (optional). Images are rescaled from their ``mpp`` (else ``--user-mpp``) to the model's.

Augmentation (per sample, from a generator seeded by ``(seed, step, index)`` so that training is
reproducible and independent of worker scheduling): random scale (``--scale-range``), crop,
90° rotations, flips, per-channel intensity (gain, offset, gamma), Gaussian blur and noise.
Targets (:func:`hcsflow.segmentation.targets.make_targets`) are computed on the augmented crop.

Loss: mean squared error on the inner and outer distances (weights 4 and 2), binary cross
entropy on the foreground logits (weight 1); NaN targets (unsupervised cell heads) are ignored.
AdamW with a one-cycle learning-rate schedule; deterministic algorithms; one CPU thread by
default (``--threads``).

The checkpoint is written to ``--out`` and a model card (Markdown) next to it, with the data,
split, validation metrics, licence and the command line that produced it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.segmentation.preprocess import DEFAULT_NORMALIZATION, normalize
from hcsflow.segmentation.targets import make_targets

#: Fraction (percent) of DSB2018 ids held out for validation.
DSB_VAL_PERCENT = 15

#: Loss weights of the three kinds of maps (inner, outer, foreground).
LOSS_WEIGHTS = (4.0, 2.0, 1.0)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Field:
    """One annotated field at the model's resolution.

    Attributes
    ----------
    nuclear : ndarray of shape (H, W), float32
        Normalized nuclear channel.
    cytoplasm : ndarray of shape (K, H, W), float32
        Normalized candidate cytoplasm channels (K = 0 for nuclei-only data).
    nuclei : ndarray of shape (H, W), int32
    cells : ndarray of shape (H, W), int32, or None
    source : str
    name : str
    """

    nuclear: np.ndarray
    cytoplasm: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray | None
    source: str
    name: str


def is_dsb_validation(image_id: str) -> bool:
    """Whether a DSB2018 image id belongs to the fixed validation split."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % 100 < DSB_VAL_PERCENT


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter (pixels) of the objects of a label image."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return float("nan")
    return float(np.sqrt(4.0 * np.median(areas) / np.pi))


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear rescale of a (H, W) or (C, H, W) float image by ``factor``."""
    from skimage.transform import rescale

    if abs(factor - 1.0) < 1e-6:
        return image.astype(np.float32, copy=True)
    chan = image.ndim == 3
    out = rescale(
        image,
        factor,
        order=1,
        channel_axis=0 if chan else None,
        anti_aliasing=factor < 1,
        preserve_range=True,
    )
    return out.astype(np.float32)


def rescale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape``."""
    from skimage.transform import resize

    if tuple(labels.shape) == tuple(shape):
        return labels.copy()
    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(
        labels.dtype
    )


def list_dsb(root: str | Path) -> list[str]:
    """Sorted ids of the DSB2018 images under ``root`` (``images/<id>.png``)."""
    root = Path(root)
    ids = sorted(p.stem for p in (root / "images").glob("*.png"))
    if not ids:
        raise ValueError(f"no DSB2018 images found under {root / 'images'}")
    missing = [i for i in ids if not (root / "labels" / f"{i}.png").exists()]
    if missing:
        raise ValueError(f"DSB2018 images without labels under {root / 'labels'}: {missing[:5]}")
    return ids


def read_dsb(root: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one DSB2018 image (H, W) and its labels (H, W)."""
    from skimage.io import imread

    root = Path(root)
    img = imread(root / "images" / f"{image_id}.png")
    lab = imread(root / "labels" / f"{image_id}.png")
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    return img, lab.astype(np.int32)


def iter_dsb_scaled(
    root: str | Path, ids: list[str], nuclear_diameter: float
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(id, image, labels)`` of DSB2018 images, the image normalized and rescaled so
    that nuclei are ``nuclear_diameter`` pixels across, the labels as annotated.

    Images without annotated nuclei are skipped.
    """
    for i in ids:
        img, lab = read_dsb(root, i)
        d = median_diameter(lab)
        if not np.isfinite(d):
            continue
        yield i, rescale_image(normalize(img, **_norm_kwargs()), nuclear_diameter / d), lab


def load_dsb(root: str | Path, ids: list[str], nuclear_diameter: float) -> list[Field]:
    """Load DSB2018 images rescaled so that nuclei are ``nuclear_diameter`` pixels across."""
    fields = []
    for i, x, lab in iter_dsb_scaled(root, ids, nuclear_diameter):
        lab = rescale_labels(lab, x.shape)
        fields.append(Field(x, np.zeros((0, *x.shape), np.float32), lab, None, "dsb", i))
    return fields


def _norm_kwargs() -> dict[str, Any]:
    return {k: DEFAULT_NORMALIZATION[k] for k in ("low", "high", "local", "kernel_size")}


def simulate_fields(
    n: int, seed: int, shape: tuple[int, int], image_mpp: float, model_mpp: float
) -> list[Field]:
    """Simulate ``n`` Cell Painting fields of random appearance at the model resolution.

    Field ``k`` uses seed ``seed + k``. Channels of the simulator: DNA, ER, RNA, AGP, Mito.
    """
    from hcsflow.simulate import random_appearance, simulate_field

    fields = []
    f = image_mpp / model_mpp
    for k in range(n):
        rng = np.random.default_rng(seed + k)
        sim = simulate_field(
            seed=seed + k, shape=shape, image_mpp=image_mpp, appearance=random_appearance(rng)
        )
        chans = [rescale_image(normalize(c, **_norm_kwargs()), f) for c in sim.image]
        hw = chans[0].shape
        nuc = rescale_labels(np.asarray(sim.nuclei).astype(np.int32), hw)
        cel = rescale_labels(np.asarray(sim.cells).astype(np.int32), hw)
        fields.append(Field(chans[0], np.stack(chans[1:]), nuc, cel, "sim", f"sim{seed + k}"))
    return fields


def load_user_folder(
    folder: str | Path, default_mpp: float | None, model_mpp: float
) -> list[Field]:
    """Load a folder of annotated fields (npz or TIFF sets, see the module docstring)."""
    from hcsflow.io import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"user training folder not found: {folder}")
    items: list[tuple[str, dict[str, Any]]] = []
    for p in sorted(folder.glob("*.npz")):
        with np.load(p) as z:
            d = {k: z[k] for k in z.files}
        if "nuclear" not in d or "nuclei" not in d:
            raise ValueError(f"{p} must hold arrays 'nuclear' and 'nuclei'")
        items.append((p.stem, d))
    for p in sorted(folder.glob("*_nuclear.tif*")):
        stem = p.name.split("_nuclear.tif")[0]
        ext = p.name.split("_nuclear")[1]
        d = {"nuclear": read_image(p)}
        for key in ("cytoplasm", "nuclei", "cells"):
            q = folder / f"{stem}_{key}{ext}"
            if q.exists():
                d[key] = read_image(q)
        if "nuclei" not in d:
            raise ValueError(f"{p} has no label image {stem}_nuclei{ext}")
        items.append((stem, d))
    if not items:
        raise ValueError(f"no <name>.npz or <name>_nuclear.tif training fields in {folder}")
    fields = []
    for name, d in items:
        mpp = float(d["mpp"]) if "mpp" in d else default_mpp
        if mpp is None:
            raise ValueError(f"{folder}/{name}: no pixel size; pass --user-mpp")
        f = mpp / model_mpp
        nuc = rescale_image(normalize(d["nuclear"], **_norm_kwargs()), f)
        cyto = (
            rescale_image(normalize(d["cytoplasm"], **_norm_kwargs()), f)[None]
            if "cytoplasm" in d
            else np.zeros((0, *nuc.shape), np.float32)
        )
        for key in ("nuclei", "cells"):
            if key in d and np.shape(d[key]) != np.shape(d["nuclear"]):
                raise ValueError(f"{folder}/{name}: {key} shape differs from the nuclear image")
        nuclei = rescale_labels(np.asarray(d["nuclei"]).astype(np.int32), nuc.shape)
        cells = (
            rescale_labels(np.asarray(d["cells"]).astype(np.int32), nuc.shape)
            if "cells" in d
            else None
        )
        fields.append(Field(nuc, cyto, nuclei, cells, "user", name))
    return fields


# --------------------------------------------------------------------------------------------
# augmentation


def _pick_cytoplasm(field: Field, rng: np.random.Generator, p_no_cyto: float) -> np.ndarray | None:
    k = field.cytoplasm.shape[0]
    if k == 0 or rng.random() < p_no_cyto:
        return None
    if k >= 2 and rng.random() < 0.3:
        a, b = rng.choice(k, size=2, replace=False)
        c = 0.5 * (field.cytoplasm[a] + field.cytoplasm[b])
        return c / max(float(c.max()), 1e-6)
    return field.cytoplasm[int(rng.integers(k))]


def _augment_channel(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    gain = math.exp(rng.uniform(math.log(0.6), math.log(1.4)))
    gamma = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    x = np.clip(x, 0, 1) ** gamma * gain + rng.uniform(-0.05, 0.1)
    if rng.random() < 0.4:
        x = gaussian_filter(x, rng.uniform(0.3, 1.5))
    if rng.random() < 0.6:
        x = x + rng.normal(0, rng.uniform(0.005, 0.08), x.shape)
    return np.clip(x, 0, 1.5).astype(np.float32)


def make_sample(
    field: Field,
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.75, 1.33),
    p_no_cyto: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one augmented training crop from a field.

    Returns
    -------
    x : ndarray of shape (2, size, size), float32
    y : ndarray of shape (6, size, size), float32 (NaN where unsupervised)
    """
    from skimage.transform import resize

    cyto = _pick_cytoplasm(field, rng, p_no_cyto)
    s = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    c = max(8, int(round(size / s)))
    h, w = field.nuclei.shape
    stack = [field.nuclear, cyto if cyto is not None else np.zeros_like(field.nuclear)]
    labs = [field.nuclei, field.cells if field.cells is not None else field.nuclei]
    # crop (padding with background when the field is smaller than the crop)
    y0 = int(rng.integers(0, max(1, h - c + 1)))
    x0 = int(rng.integers(0, max(1, w - c + 1)))
    img = np.zeros((2, c, c), np.float32)
    lab = np.zeros((2, c, c), np.int32)
    ch, cw = min(c, h), min(c, w)
    for i in range(2):
        img[i, :ch, :cw] = stack[i][y0 : y0 + ch, x0 : x0 + cw]
        lab[i, :ch, :cw] = labs[i][y0 : y0 + ch, x0 : x0 + cw]
    if c != size:
        img = resize(img, (2, size, size), order=1, preserve_range=True, anti_aliasing=c > size)
        lab = np.stack(
            [
                resize(lab[i], (size, size), order=0, preserve_range=True, anti_aliasing=False)
                for i in range(2)
            ]
        ).astype(np.int32)
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k, axes=(1, 2))
    if rng.random() < 0.5:
        img, lab = img[:, :, ::-1], lab[:, :, ::-1]
    img = np.stack(
        [
            _augment_channel(img[0], rng),
            _augment_channel(img[1], rng)
            if cyto is not None
            else np.zeros(img[1].shape, np.float32),
        ]
    )
    has_cells = field.cells is not None and cyto is not None
    y = make_targets(
        np.ascontiguousarray(lab[0]), np.ascontiguousarray(lab[1]) if has_cells else None
    )
    return np.ascontiguousarray(img, dtype=np.float32), y


def make_batch(
    fields_by_source: dict[str, list[Field]],
    mix: dict[str, float],
    batch: int,
    size: int,
    seed: int,
    step: int,
    scale_range: tuple[float, float],
    p_no_cyto: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One reproducible batch: sample ``i`` of step ``step`` uses ``default_rng([seed, step, i])``.

    Returns
    -------
    x : ndarray of shape (batch, 2, size, size)
    y : ndarray of shape (batch, 6, size, size)
    """
    sources = [s for s in sorted(fields_by_source) if fields_by_source[s]]
    p = np.array([mix.get(s, 1.0) for s in sources], float)
    p /= p.sum()
    xs, ys = [], []
    for i in range(batch):
        rng = np.random.default_rng([seed, step, i])
        src = sources[int(rng.choice(len(sources), p=p))]
        pool = fields_by_source[src]
        x, y = make_sample(pool[int(rng.integers(len(pool)))], size, rng, scale_range, p_no_cyto)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


# --------------------------------------------------------------------------------------------
# loss and training


def segmentation_loss(pred, target):
    """Weighted loss over the six heads; NaN targets are ignored.

    Parameters
    ----------
    pred : Tensor of shape (B, 6, H, W)
    target : Tensor of shape (B, 6, H, W)

    Returns
    -------
    Tensor (scalar)
    """
    import torch
    import torch.nn.functional as F

    total = pred.new_zeros(())
    for base in (0, 3):
        for j, wgt in enumerate(LOSS_WEIGHTS):
            t = target[:, base + j]
            p = pred[:, base + j]
            m = ~torch.isnan(t)
            if not bool(m.any()):
                continue
            t0 = torch.where(m, t, torch.zeros_like(t))
            if j == 2:
                per = F.binary_cross_entropy_with_logits(p, t0, reduction="none")
            else:
                per = (p - t0) ** 2
            total = total + wgt * (per * m).sum() / m.sum()
    return total


def set_determinism(seed: int, threads: int) -> None:
    """Seed torch and numpy, one thread count, deterministic algorithms."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train_model(
    fields_by_source: dict[str, list[Field]],
    steps: int,
    *,
    seed: int = 0,
    batch: int = 8,
    size: int = 160,
    lr: float = 2e-3,
    mix: dict[str, float] | None = None,
    scale_range: tuple[float, float] = (0.75, 1.33),
    p_no_cyto: float = 0.2,
    arch: dict[str, Any] | None = None,
    threads: int = 1,
    log=None,
    model=None,
    device: str = "cpu",
    snapshot=None,
    snapshot_every: int = 0,
):
    """Train a :class:`~hcsflow.segmentation.model.SegNet` for ``steps`` steps.

    Returns
    -------
    model : SegNet (eval mode)
    history : list of float
        Loss per step.
    """
    import torch

    from hcsflow.segmentation.model import SegNet

    set_determinism(seed, threads)
    if model is None:
        model = SegNet(**(arch or {}))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1 if steps > 20 else 0.3
    )
    model.train()
    history = []
    t0 = time.time()
    for step in range(steps):
        x, y = make_batch(
            fields_by_source, mix or {}, batch, size, seed, step, scale_range, p_no_cyto
        )
        pred = model(torch.from_numpy(x).to(device))
        loss = segmentation_loss(pred, torch.from_numpy(y).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0:
            snapshot(model, step + 1)
        if log is not None and (step % 50 == 0 or step == steps - 1):
            recent = np.mean(history[-50:])
            log(f"step {step + 1}/{steps} loss {recent:.4f} ({time.time() - t0:.0f} s)")
    model.cpu().eval()
    return model, history


# --------------------------------------------------------------------------------------------
# evaluation


def predict_maps(model, inp: np.ndarray) -> np.ndarray:
    """Run the network on one prepared input (2, H, W) -> maps (6, H, W), fg as probability."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(inp))[None])[0].numpy()
    out = out.copy()
    out[[2, 5]] = 1.0 / (1.0 + np.exp(-out[[2, 5]]))
    return out


def postprocess_params(nuclear_diameter: float) -> dict[str, Any]:
    """Deep-watershed settings stored with a checkpoint (``meta["postprocess"]``).

    Seeds are maxima over a neighbourhood of about a sixth of the nuclear diameter the network
    was trained at, with an inner distance above 0.5; touching basins whose saddle lies less
    than 0.075 below the lower peak are then merged, so that shallow secondary maxima of the
    inner distance do not split a nucleus while close nuclei in clumps keep their own seeds
    (chosen with ``benchmarks/tune_inference.py --grid`` on DSB2018 training images and
    simulated fields; ``docs/segmentation-model.md``).
    """
    return {
        "min_distance": max(3, int(round(nuclear_diameter / 6))),
        "seed_threshold": 0.5,
        "fg_threshold": 0.5,
        "merge_dynamic": 0.075,
    }


def _instances(maps: np.ndarray, post: dict[str, Any], cells: bool):
    from hcsflow.segmentation.postprocess import (
        PostprocessParams,
        cells_from_nuclei,
        nuclei_from_maps,
    )

    params = PostprocessParams(**post)
    nuclei, _ = nuclei_from_maps(maps[0], maps[2], params)
    if not cells:
        return nuclei, None
    nuclei, cell_labels, _ = cells_from_nuclei(nuclei, maps[3], maps[5], params)
    return nuclei, cell_labels


def _scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    from hcsflow.segmentation.metrics import dsb_score, f1_at

    return f1_at(pred, true, 0.5), dsb_score(pred, true)


def summarize(scores: list[tuple[float, float]]) -> dict[str, float]:
    """Mean per-image F1@0.5 and DSB score (mean over IoU 0.5:0.95 of TP/(TP+FP+FN))."""
    return {
        "f1_05": float(np.mean([a for a, _ in scores])),
        "dsb": float(np.mean([b for _, b in scores])),
        "n_images": len(scores),
    }


def evaluate_dsb(
    model, root: str | Path, ids: list[str], nuclear_diameter: float, post: dict[str, Any]
) -> dict:
    """Nuclear F1@0.5 and DSB score on DSB2018 images (rescaled by the annotated size)."""
    scores = []
    for _, x, lab in iter_dsb_scaled(root, ids, nuclear_diameter):
        maps = predict_maps(model, np.stack([x, np.zeros_like(x)]))
        pred = rescale_labels(_instances(maps, post, cells=False)[0], lab.shape)
        scores.append(_scores(pred, lab))
    return summarize(scores)


def evaluate_fields(
    model, fields: list[Field], post: dict[str, Any], use_cytoplasm: bool = True
) -> dict:
    """Nuclear and whole-cell F1@0.5 / DSB score on fields at model resolution.

    The cytoplasm input is the field's third candidate channel (AGP for simulated fields)
    or its only one.
    """
    nuc_scores, cell_scores = [], []
    for f in fields:
        k = f.cytoplasm.shape[0]
        has_cyto = use_cytoplasm and k > 0
        cyto = f.cytoplasm[min(2, k - 1)] if has_cyto else np.zeros_like(f.nuclear)
        maps = predict_maps(model, np.stack([f.nuclear, cyto]))
        nuclei, cells = _instances(maps, post, cells=has_cyto and f.cells is not None)
        nuc_scores.append(_scores(nuclei, f.nuclei))
        if cells is not None:
            cell_scores.append(_scores(cells, f.cells))
    out = {"nuclei": summarize(nuc_scores)}
    if cell_scores:
        out["cells"] = summarize(cell_scores)
    return out


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hcsflow train-segmenter``."""
    parser.add_argument(
        "--out", required=True, help="checkpoint to write (.pt); card: .md beside it"
    )
    parser.add_argument("--dsb", default=None, help="DSB2018 nuclei folder (images/, labels/)")
    parser.add_argument("--sim", type=int, default=0, help="number of simulated training fields")
    parser.add_argument("--sim-val", type=int, default=4, help="simulated validation fields")
    parser.add_argument("--sim-shape", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--sim-mpp", type=float, default=0.65, help="µm/px of simulated fields")
    parser.add_argument(
        "--sim-seed", type=int, default=1000, help="first seed of the simulated training fields"
    )
    parser.add_argument("--user", action="append", default=[], help="folder of annotated fields")
    parser.add_argument("--user-mpp", type=float, default=None, help="µm/px of the user fields")
    parser.add_argument("--model-mpp", type=float, default=0.65, help="model resolution, µm/px")
    parser.add_argument(
        "--nuclear-diameter",
        type=float,
        default=18.0,
        help="median nuclear diameter (model px) that DSB2018 images are rescaled to",
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="crop size (model px)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    parser.add_argument("--mix-dsb", type=float, default=1.0, help="sampling weight of DSB2018")
    parser.add_argument("--mix-sim", type=float, default=1.0, help="sampling weight of simulated")
    parser.add_argument("--mix-user", type=float, default=1.0, help="sampling weight of user data")
    parser.add_argument("--p-no-cyto", type=float, default=0.2)
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.33))
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 1, 2, 2, 2])
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="also write <out>.step<N>.pt every N steps (0: never)",
    )
    parser.add_argument("--init", default=None, help="checkpoint to start from (fine-tuning)")
    parser.add_argument("--name", default=None, help="model name in the card (default: file stem)")


def run(args: argparse.Namespace) -> int:
    """Train, validate, write the checkpoint and the model card."""
    from hcsflow.segmentation.model import HEADS, count_parameters, load_checkpoint, save_checkpoint

    def log(msg: str) -> None:
        print(f"[train-segmenter] {msg}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields: dict[str, list[Field]] = {}
    val_ids: list[str] = []
    train_ids: list[str] = []
    t_start = time.time()
    if args.dsb:
        ids = list_dsb(args.dsb)
        val_ids = [i for i in ids if is_dsb_validation(i)]
        train_ids = [i for i in ids if not is_dsb_validation(i)]
        fields["dsb"] = load_dsb(args.dsb, train_ids, args.nuclear_diameter)
        log(f"DSB2018: {len(train_ids)} training, {len(val_ids)} validation images")
    sim_val: list[Field] = []
    if args.sim:
        shape = tuple(args.sim_shape)
        fields["sim"] = simulate_fields(
            args.sim, args.sim_seed, shape, args.sim_mpp, args.model_mpp
        )
        if args.sim_val:
            sim_val = simulate_fields(
                args.sim_val, args.sim_seed + 100_000, shape, args.sim_mpp, args.model_mpp
            )
        log(f"simulated: {len(fields['sim'])} training, {len(sim_val)} validation fields")
    for folder in args.user:
        fields.setdefault("user", []).extend(
            load_user_folder(folder, args.user_mpp, args.model_mpp)
        )
    if not any(fields.values()):
        raise ValueError("no training data: give --dsb, --sim or --user")
    arch = {"in_channels": 2, "widths": tuple(args.widths), "blocks": tuple(args.blocks)}
    init = None
    if args.init:
        init, _ = load_checkpoint(args.init)
    mix = {"dsb": args.mix_dsb, "sim": args.mix_sim, "user": args.mix_user}
    base_meta = {
        "model_mpp": args.model_mpp,
        "nuclear_diameter_px": args.nuclear_diameter,
        "heads": list(HEADS),
        "arch": {"in_channels": 2, "widths": list(args.widths), "blocks": list(args.blocks)},
        "normalization": _norm_kwargs(),
        "postprocess": postprocess_params(args.nuclear_diameter),
    }

    def snapshot(model, step: int) -> None:
        path = out.with_name(f"{out.stem}.step{step}.pt")
        save_checkpoint(path, model, {**base_meta, "card": {"snapshot_step": step}})
        model.train()

    t_train = time.time()
    model, history = train_model(
        fields,
        args.steps,
        seed=args.seed,
        batch=args.batch,
        size=args.size,
        lr=args.lr,
        mix=mix,
        scale_range=tuple(args.scale_range),
        p_no_cyto=args.p_no_cyto,
        arch=arch,
        threads=args.threads,
        log=log,
        model=init,
        device=args.device,
        snapshot=snapshot,
        snapshot_every=args.snapshot_every,
    )
    train_s = time.time() - t_train
    metrics: dict[str, Any] = {}
    if val_ids:
        metrics["dsb2018_val"] = evaluate_dsb(
            model, args.dsb, val_ids, args.nuclear_diameter, base_meta["postprocess"]
        )
        log(f"DSB2018 validation: {metrics['dsb2018_val']}")
    if sim_val:
        post = base_meta["postprocess"]
        metrics["sim_val"] = evaluate_fields(model, sim_val, post)
        metrics["sim_val_nuclear_only"] = evaluate_fields(model, sim_val, post, use_cytoplasm=False)
        log(f"simulated validation: {metrics['sim_val']}")
    name = args.name or out.stem
    command = command_line(args)
    card = {
        "name": name,
        "licence": "BSD-3-Clause (weights trained by the hcsflow authors); DSB2018 data CC0",
        "data": {
            "dsb2018": {
                "root": str(args.dsb) if args.dsb else None,
                "train_images": len(train_ids),
                "val_images": len(val_ids),
                "split": f"validation when int(sha1(id)[:8], 16) % 100 < {DSB_VAL_PERCENT}",
                "val_ids": val_ids,
            },
            "simulated": {
                "train_fields": args.sim,
                "seeds": [args.sim_seed, args.sim_seed + args.sim - 1] if args.sim else None,
                "val_seeds": (
                    [args.sim_seed + 100_000, args.sim_seed + 100_000 + args.sim_val - 1]
                    if sim_val
                    else None
                ),
                "shape": list(args.sim_shape),
                "image_mpp": args.sim_mpp,
            },
            "user": [str(u) for u in args.user],
        },
        "training": {
            "steps": args.steps,
            "batch": args.batch,
            "crop": args.size,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "device": args.device,
            "train_seconds": round(train_s, 1),
            "final_loss": float(np.mean(history[-50:])) if history else None,
            "mix": mix,
            "p_no_cyto": args.p_no_cyto,
            "scale_range": list(args.scale_range),
        },
        "metrics": metrics,
        "command": command,
        "parameters": count_parameters(model),
    }
    card_path = save_with_card(out, model, {**base_meta, "card": card})
    log(f"wrote {out} and {card_path} in {time.time() - t_start:.0f} s")
    return 0


#: Keys of the workflow's ``segmentation.train`` configuration and their defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "dsb": None,
    "user": [],
    "user_mpp": None,
    "sim_fields": 48,
    "steps": 3000,
    "seed": 0,
    "device": "cpu",
}


def options_from_config(train: dict[str, Any] | None, image_mpp: float) -> list[str]:
    """``hcsflow train-segmenter`` options from the workflow's ``segmentation.train`` block.

    Parameters
    ----------
    train : mapping or None
        Keys of :data:`CONFIG_DEFAULTS` (missing keys take their defaults).
    image_mpp : float
        Pixel size of the simulated training fields (the workflow's ``image_mpp``).

    Returns
    -------
    list of str
    """
    cfg = dict(CONFIG_DEFAULTS)
    unknown = sorted(set(train or {}) - set(cfg))
    if unknown:
        raise ValueError(f"segmentation.train: unknown keys {unknown}; known: {sorted(cfg)}")
    cfg.update(train or {})
    args: list[str] = []
    if cfg["dsb"]:
        args += ["--dsb", str(cfg["dsb"])]
    for folder in cfg["user"]:
        args += ["--user", str(folder)]
    if cfg["user_mpp"]:
        args += ["--user-mpp", str(cfg["user_mpp"])]
    args += ["--sim", str(int(cfg["sim_fields"])), "--sim-mpp", str(float(image_mpp))]
    args += ["--steps", str(int(cfg["steps"])), "--seed", str(int(cfg["seed"]))]
    args += ["--device", str(cfg["device"])]
    return args


def command_line(
    args: argparse.Namespace,
    command: str = "train-segmenter",
    positional: str | None = None,
    repeated: tuple[str, ...] = ("user", "note"),
) -> str:
    """The explicit ``hcsflow <command>`` command line (every option) of parsed arguments.

    ``positional`` names the attribute holding the positional argument(s) (a string or a
    list), written after the options; options in ``repeated`` (``action="append"``) repeat
    their flag for each value.
    """
    parts = ["hcsflow", command]
    for key, value in vars(args).items():
        if key == positional or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if key in repeated:
            for v in value:
                parts += [flag, str(v)]
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        elif value is True:
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    if positional is not None:
        values = getattr(args, positional)
        parts += [values] if isinstance(values, str) else [str(v) for v in values]
    return " ".join(shlex.quote(p) for p in parts)


def save_with_card(out: str | Path, model, meta: dict[str, Any]) -> Path:
    """Write the checkpoint ``out`` (creating its folder) and its Markdown card beside it.

    Returns the card's path (``out`` with the suffix ``.md``).
    """
    from hcsflow.segmentation.model import save_checkpoint

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, meta)
    write_card(out.with_suffix(".md"), meta)
    return out.with_suffix(".md")


def write_card(path: str | Path, meta: dict[str, Any]) -> None:
    """Write the Markdown model card of a checkpoint."""
    from hcsflow.io import atomic_path

    card = meta["card"]
    m = card.get("metrics", {})
    lines = [
        f"# Segmentation model `{card['name']}`",
        "",
        "Mesmer-style network (see `hcsflow/segmentation/model.py`): input nuclear + "
        "cytoplasm channels normalized per image, six output maps "
        f"({', '.join(meta['heads'])}).",
        "",
        f"- Architecture: `{json.dumps(meta['arch'])}`, {card['parameters']:,} parameters",
        f"- Model resolution: {meta['model_mpp']} µm/px; DSB2018 images rescaled so the median "
        f"nucleus is {meta['nuclear_diameter_px']} px across",
        f"- Normalization: `{json.dumps(meta['normalization'])}`",
        f"- Post-processing: `{json.dumps(meta.get('postprocess', {}))}`",
        f"- Licence: {card['licence']}",
        "",
        "## Data",
        "",
        "```json",
        json.dumps({k: v for k, v in card["data"].items()}, indent=1, default=str)[:6000],
        "```",
        "",
        "## Training",
        "",
        "```json",
        json.dumps(card["training"], indent=1),
        "```",
        "",
        "## Validation metrics (at the end of training)",
        "",
        "F1 at IoU 0.5 and DSB score (mean over IoU 0.50:0.05:0.95 of TP / (TP + FP + FN)), "
        "mean per image, at the model's resolution; DSB2018 images rescaled by their annotated "
        "nuclear size; instances from the deep watershed "
        "(`hcsflow.segmentation.postprocess`) with the settings above.",
        "",
        "| data | objects | F1@0.5 | DSB score | images |",
        "|---|---|---|---|---|",
    ]
    rows = []
    if "dsb2018_val" in m:
        rows.append(("DSB2018 validation", "nuclei", m["dsb2018_val"]))
    for key, label in (
        ("sim_val", "simulated validation"),
        ("sim_val_nuclear_only", "simulated, no cytoplasm"),
    ):
        for obj in ("nuclei", "cells"):
            if key in m and obj in m[key]:
                rows.append((label, obj, m[key][obj]))
    for data, obj, r in rows:
        lines.append(f"| {data} | {obj} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n_images']} |")
    bench = card.get("benchmark")
    if bench:
        lines += [
            "",
            "## Benchmark through `Segmenter` (`benchmarks/segmentation_model.py`)",
            "",
            "Whole pipeline at the input resolution (normalize, rescale, tile, network, deep "
            "watershed, labels back to the input size).",
            "",
            "| data | objects | F1@0.5 | DSB score | images |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['data']} | {r['objects']} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |"
            for r in bench["rows"]
        ]
        lines += ["", f"Command: `{bench['command']}`"]
    for old in card.get("benchmark_history", []):
        lines += ["", f"### Earlier benchmark: {old.get('setting', '')}", ""]
        lines += ["| data | objects | F1@0.5 | DSB score | images |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['data']} | {r['objects']} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |"
            for r in old["rows"]
        ]
        lines += ["", f"Command: `{old['command']}`"]
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    lines += ["", "## Command", "", "```", card["command"], "```", ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
