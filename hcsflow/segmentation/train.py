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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.segmentation.evaluation import iter_dsb_scaled, simulated_split
from hcsflow.segmentation.preprocess import _norm_kwargs, normalize, rescale_image, resize_labels
from hcsflow.segmentation.targets import make_targets

#: Loss weights of the three kinds of maps (inner, outer, foreground).
LOSS_WEIGHTS = (4.0, 2.0, 1.0)


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


def load_dsb(root: str | Path, ids: list[str], nuclear_diameter: float) -> list[Field]:
    """Load DSB2018 images rescaled so that nuclei are ``nuclear_diameter`` pixels across."""
    fields = []
    for i, x, lab in iter_dsb_scaled(root, ids, nuclear_diameter):
        lab = resize_labels(lab, x.shape)
        fields.append(Field(x, np.zeros((0, *x.shape), np.float32), lab, None, "dsb", i))
    return fields


def simulate_fields(
    n: int, seed: int, shape: tuple[int, int], image_mpp: float, model_mpp: float
) -> list[Field]:
    """Simulate ``n`` Cell Painting fields of random appearance at the model resolution.

    Field ``k`` uses seed ``seed + k`` (:func:`~hcsflow.segmentation.evaluation.simulated_split`).
    Channels of the simulator: DNA, ER, RNA, AGP, Mito.
    """
    fields = []
    f = image_mpp / model_mpp
    for k, sim in enumerate(simulated_split("train", n, shape, image_mpp, first=seed)):
        chans = [rescale_image(normalize(c, **_norm_kwargs()), f) for c in sim.image]
        hw = chans[0].shape
        nuc = resize_labels(np.asarray(sim.nuclei).astype(np.int32), hw)
        cel = resize_labels(np.asarray(sim.cells).astype(np.int32), hw)
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
        nuclei = resize_labels(np.asarray(d["nuclei"]).astype(np.int32), nuc.shape)
        cells = (
            resize_labels(np.asarray(d["cells"]).astype(np.int32), nuc.shape)
            if "cells" in d
            else None
        )
        fields.append(Field(nuc, cyto, nuclei, cells, "user", name))
    return fields


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
