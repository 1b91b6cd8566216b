"""Training a per-cell embedder on a screen's own cells (DeepProfiler's recipe).

Moshkov et al. (2024, Nat Commun 15:1594) train a CNN on single-cell crops of the screen
itself to recognise the treatment each cell received (compound x dose; the negative control
is one class among the others): *weakly supervised*, since most cells of a treated well look
like control cells, and the network's late layer (the pooled features under the classifier)
becomes the embedding. The label-free alternative learns by contrast (SimCLR, Chen et al.
2020): two random views of one crop must be closer to each other than to the views of every
other crop of the batch (normalized-temperature cross entropy, NT-Xent).

The network is :class:`~hcsflow.features.embed_nets.CellCNN`, a compact all-channel ResNet
(about 0.9 M parameters, 256-d embedding by default), small enough to train in minutes on two
CPU cores and to embed a field of 200 cells in a fraction of a second.

Data (:mod:`hcsflow.features.embed_samples`, names re-exported here)
    Crops are sampled per field with :func:`sample_crops` (a deterministic subset of the
    field's cells, interior cells first), written per shard with :func:`write_sample` (npz:
    ``crops`` float16 (N, C, S, S) and one array per metadata column, no pickles) and read
    back with :func:`read_samples`. Labels are the sorted unique ``Metadata_Treatment``
    strings (:func:`treatment_labels`).
Training (:func:`train_embedder`)
    Crops are resized once (bilinear, antialiased) to the network's ``input_px`` and
    normalized per channel by the mean and standard deviation of all training pixels (stored
    in the checkpoint, so embedding uses the training statistics). Each step draws a batch in
    a fixed order (a seeded permutation per epoch) and augments it: a random flip and 90°
    rotation, a shift of a few pixels (zero fill, as at the field border) and a per-channel
    intensity gain (log-normal); the contrastive views use larger shifts and gains. AdamW
    with a one-cycle learning rate. On the CPU, with ``torch.use_deterministic_algorithms``
    and a fixed thread count, two runs with one seed give byte-identical weights.
Checkpoint (:func:`save_embedder`, :mod:`hcsflow.features.embed_card`, re-exported here)
    ``{"format": "hcsflow-embedder-1", "state_dict": ..., "config": {...}}`` (see
    :func:`train_embedder`) written atomically, with a Markdown model card beside it;
    :meth:`hcsflow.features.embed.Embedder.load` reads it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hcsflow.features.embed_augment import _resize_all, augment, channel_statistics
from hcsflow.features.embed_card import LICENCE, save_embedder, write_model_card
from hcsflow.features.embed_samples import (
    SAMPLE_COLUMNS,
    SAMPLE_FORMAT,
    read_samples,
    sample_crops,
    treatment_labels,
    treatment_name,
    write_sample,
)

__all__ = [
    "METHODS",
    "SAMPLE_COLUMNS",
    "SAMPLE_FORMAT",
    "add_arguments",
    "read_samples",
    "run",
    "sample_crops",
    "save_embedder",
    "train_embedder",
    "treatment_labels",
    "treatment_name",
    "write_model_card",
    "write_sample",
]

#: Training methods.
METHODS = ("weakly_supervised", "self_supervised")

#: Default architecture of the trained embedder.
DEFAULT_ARCH: dict[str, Any] = {
    "widths": [32, 64, 128, 192],
    "blocks": [1, 1, 1, 1],
    "dim": 256,
    "first_stride": 2,
}

#: Augmentation per method: maximal shift (fraction of the crop), log-sd of the channel gain.
AUGMENT: dict[str, dict[str, float]] = {
    "weakly_supervised": {"shift": 0.06, "gain": 0.1},
    "self_supervised": {"shift": 0.12, "gain": 0.25},
}


# --------------------------------------------------------------------------------------------
# training


def nt_xent(z1: Any, z2: Any, temperature: float) -> Any:
    """SimCLR's normalized-temperature cross entropy of two views (B, P) each."""
    import torch
    import torch.nn.functional as F

    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class _Determinism:
    """Context: seeded torch, deterministic algorithms, thread count; restored on exit."""

    def __init__(self, seed: int, threads: int | None, cuda: bool = False) -> None:
        self.seed, self.threads, self.cuda = int(seed), threads, bool(cuda)

    def __enter__(self) -> _Determinism:
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self._det = torch.are_deterministic_algorithms_enabled()
        self._warn = torch.is_deterministic_algorithms_warn_only_enabled()
        self._threads = torch.get_num_threads()
        self._bench = torch.backends.cudnn.benchmark
        torch.manual_seed(self.seed)
        # CPU: every op used is deterministic; CUDA: warn where an op has no such variant
        torch.use_deterministic_algorithms(True, warn_only=self.cuda)
        torch.backends.cudnn.benchmark = False
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.use_deterministic_algorithms(self._det, warn_only=self._warn)
        torch.backends.cudnn.benchmark = self._bench
        torch.set_num_threads(self._threads)


def _batches(n: int, batch_size: int, seed: int, steps: int):
    """Index arrays of ``steps`` batches: consecutive slices of a seeded permutation per epoch."""
    per_epoch = max(n // batch_size, 1)
    size = min(batch_size, n)
    for step in range(steps):
        epoch, j = divmod(step, per_epoch)
        if j == 0:
            perm = np.random.default_rng(np.random.SeedSequence([seed, 0xE90C, epoch])).permutation(
                n
            )
        yield step, perm[j * size : (j + 1) * size]


def train_embedder(
    crops: np.ndarray,
    labels: np.ndarray | None,
    *,
    method: str = "weakly_supervised",
    steps: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    device: str = "cpu",
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    input_px: int | None = 64,
    arch: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    image_mpp: float | None = None,
    crop_um: float | None = None,
    temperature: float = 0.2,
    weight_decay: float = 1e-4,
    data: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Train a :class:`~hcsflow.features.embed_nets.CellCNN` embedder on crops.

    Parameters
    ----------
    crops : ndarray of float16 or float32, shape (N, C, S, S)
        Raw (illumination-corrected, not normalized) crops of ``crop_um`` µm.
    labels : ndarray of int, shape (N,), or None
        Class of each crop (``weakly_supervised``; see :func:`treatment_labels`); ignored by
        ``self_supervised``.
    method : {"weakly_supervised", "self_supervised"}
    steps : int
        Optimizer steps.
    batch_size : int
        Crops per step (``self_supervised``: two views each).
    seed : int
        Seed of initialization, batch order and augmentation.
    lr : float
        Peak learning rate of the one-cycle schedule (AdamW).
    device : str
        ``"cpu"`` or ``"cuda[:N]"`` (byte-identical reruns are guaranteed on the CPU).
    threads : int, optional
        ``torch.set_num_threads`` during training (restored afterwards).
    log : callable, optional
        Called with progress lines.
    input_px : int or None
        Network input size; crops are resized to it (None: their own size ``S``).
    arch : mapping, optional
        ``widths``, ``blocks``, ``dim``, ``first_stride`` (default :data:`DEFAULT_ARCH`).
    classes : sequence of str, optional
        Class names (index = label), recorded in the checkpoint.
    channel_names : sequence of str, optional
    image_mpp : float, optional
        Pixel size of the crops (µm); with it ``crop_um = S * image_mpp``.
    crop_um : float, optional
        Crop edge in µm (default ``S * image_mpp``; one of the two is required).
    temperature : float
        NT-Xent temperature (``self_supervised``).
    weight_decay : float
    data : mapping, optional
        Description of the training data for the checkpoint and card.
    name : str, optional
        Model name (default: set by :func:`save_embedder` from the file name).

    Returns
    -------
    dict
        The checkpoint: ``format``, ``state_dict`` (CPU tensors, including the training
        head) and ``config`` with ``name``, ``arch``, ``normalization`` (``mean``/``std`` per
        channel, from the training crops at ``input_px``), ``channel_names``, ``crop_px``
        (``S``), ``crop_um``, ``image_mpp``, ``input_px``, ``method``, ``classes``,
        ``training`` (steps, batch_size, lr, seed, threads, device, augmentation,
        final_loss, loss_history, train_seconds) and ``data``.
    """
    from hcsflow.features.embed import CHECKPOINT_FORMAT
    from hcsflow.features.embed_nets import count_parameters

    crops, y_all, n_classes, crop_um, dev = _check_training_inputs(
        crops, labels, method, steps, batch_size, image_mpp, crop_um, channel_names, classes, device
    )
    n, s = crops.shape[0], crops.shape[2]
    arch_cfg = {**DEFAULT_ARCH, **dict(arch or {})}
    px = s if input_px is None else int(input_px)
    aug = AUGMENT[method]
    shift = max(1, int(round(aug["shift"] * px)))
    training: dict[str, Any] = {
        "steps": int(steps),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "seed": int(seed),
        "threads": None if threads is None else int(threads),
        "device": dev,
        "augmentation": {"shift_px": shift, "gain_log_sd": aug["gain"], "dihedral": True},
        "temperature": float(temperature) if method == "self_supervised" else None,
    }
    t0 = time.perf_counter()
    with _Determinism(seed, threads, cuda=dev.startswith("cuda")):
        data_t, (mean, std), model = _prepare(crops, px, arch_cfg, n_classes, method, dev)
        history = _fit(model, data_t, y_all, (mean, std), method, training, log, t0)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    _record_losses(training, history, seconds)
    cfg: dict[str, Any] = {
        "name": name,
        "arch": dict(model.arch),
        "parameters": count_parameters(model),
        "normalization": {"mean": mean, "std": std},
        "channel_names": None if channel_names is None else [str(x) for x in channel_names],
        "crop_px": int(s),
        "crop_um": float(crop_um),
        "image_mpp": None if image_mpp is None else float(image_mpp),
        "input_px": int(px),
        "method": method,
        "classes": [str(x) for x in (classes or [])],
        "training": training,
        "data": {"n_crops": int(n), "n_classes": int(n_classes), **dict(data or {})},
        "licence": LICENCE,
    }
    return {"format": CHECKPOINT_FORMAT, "state_dict": state, "config": cfg}


def _check_training_inputs(
    crops: np.ndarray,
    labels: np.ndarray | None,
    method: str,
    steps: int,
    batch_size: int,
    image_mpp: float | None,
    crop_um: float | None,
    channel_names: Sequence[str] | None,
    classes: Sequence[str] | None,
    device: str,
) -> tuple[np.ndarray, np.ndarray | None, int, float, str]:
    """Check the arguments of :func:`train_embedder`.

    Returns
    -------
    crops : ndarray, shape (N, C, S, S)
    labels : ndarray of int64, shape (N,), or None
        None for ``self_supervised``.
    n_classes : int
        0 for ``self_supervised``.
    crop_um : float
        Given, or ``S * image_mpp``.
    device : str
        The resolved device.
    """
    from hcsflow.features.embed import resolve_device

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3] or crops.shape[0] < 2:
        raise ValueError(f"crops must have shape (N >= 2, C, S, S), got {crops.shape}")
    n, c, s = crops.shape[0], crops.shape[1], crops.shape[2]
    if int(steps) < 1 or int(batch_size) < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {steps}, {batch_size}")
    if crop_um is None:
        if image_mpp is None:
            raise ValueError("give image_mpp or crop_um (the physical size of the crops)")
        crop_um = round(s * float(image_mpp), 6)
    if channel_names is not None and len(channel_names) != c:
        raise ValueError(f"{len(channel_names)} channel names for {c} channels")
    dev = resolve_device(device)
    y_all = None
    n_classes = 0
    if method == "weakly_supervised":
        if labels is None:
            raise ValueError("weakly_supervised training needs labels")
        y_all = np.asarray(labels).astype(np.int64).reshape(-1)
        if y_all.shape[0] != n or y_all.min(initial=0) < 0:
            raise ValueError(f"labels must be {n} non-negative integers")
        n_classes = max(int(y_all.max()) + 1, len(classes or ()))
        if n_classes < 2:
            raise ValueError("weakly_supervised training needs at least 2 classes")
    return crops, y_all, n_classes, crop_um, dev


def _prepare(
    crops: np.ndarray,
    px: int,
    arch: Mapping[str, Any],
    n_classes: int,
    method: str,
    dev: str,
) -> tuple[Any, tuple[list[float], list[float]], Any]:
    """Training crops resized to ``px``, their per-channel statistics, and a new network.

    Returns
    -------
    data : Tensor of float16, shape (N, C, px, px)
        On the CPU.
    normalization : tuple of list of float
        Per-channel ``(mean, std)`` of ``data`` (:func:`channel_statistics`).
    model : CellCNN
        Initialized from torch's random state, on ``dev``: a classifier head with
        ``n_classes`` outputs, or a 128-d projection head for ``self_supervised``.
    """
    from hcsflow.features.embed_nets import CellCNN

    data_t = _resize_all(crops, px)
    mean, std = channel_statistics(data_t.numpy())
    model = CellCNN(
        crops.shape[1],
        widths=arch["widths"],
        blocks=arch["blocks"],
        dim=int(arch["dim"]),
        n_classes=n_classes,
        proj_dim=128 if method == "self_supervised" else 0,
        first_stride=int(arch["first_stride"]),
    ).to(dev)
    return data_t, (mean, std), model


def _record_losses(training: dict[str, Any], history: list[float], seconds: float) -> None:
    """Add the losses (mean of the first and last tenth, at most 50 steps), the per-step
    history, the duration and torch's version to a checkpoint's ``training`` record."""
    import torch

    tail = max(1, min(50, len(history) // 10 or 1))
    training.update(
        {
            "initial_loss": float(np.mean(history[:tail])),
            "final_loss": float(np.mean(history[-tail:])),
            "loss_history": [round(v, 5) for v in history],
            "train_seconds": round(seconds, 2),
            "torch": str(torch.__version__),
        }
    )


def _fit(
    model: Any,
    data: Any,
    labels: np.ndarray | None,
    normalization: tuple[list[float], list[float]],
    method: str,
    training: Mapping[str, Any],
    log: Callable[[str], None] | None,
    t0: float,
) -> list[float]:
    """Train ``model`` in place (AdamW, one-cycle learning rate) and leave it in eval mode.

    Parameters
    ----------
    model : CellCNN
        On the training device, with a classifier (``weakly_supervised``) or a projection
        head (``self_supervised``).
    data : Tensor of float16, shape (N, C, S, S)
        Raw crops at the network's input size, on the CPU.
    labels : ndarray of int64, shape (N,), or None
        Classes (``weakly_supervised``).
    normalization : tuple of list of float
        Per-channel ``(mean, std)``.
    method : {"weakly_supervised", "self_supervised"}
    training : mapping
        ``steps``, ``batch_size``, ``seed``, ``lr``, ``weight_decay``, ``temperature`` and
        ``augmentation`` (``shift_px``, ``gain_log_sd``) as recorded in the checkpoint.
    log : callable or None
        Called with progress lines.
    t0 : float
        ``time.perf_counter()`` at the start of training (for the progress lines).

    Returns
    -------
    list of float
        The loss of every step.
    """
    import torch
    import torch.nn.functional as F

    dev = next(model.parameters()).device
    mean, std = normalization
    steps, seed, lr = training["steps"], training["seed"], training["lr"]
    shift, gain = training["augmentation"]["shift_px"], training["augmentation"]["gain_log_sd"]
    temperature = training["temperature"]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
    inv_t = 1.0 / torch.tensor(std, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=training["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=0.1 if steps > 20 else 0.3
    )
    y_t = None if labels is None else torch.from_numpy(labels)
    history: list[float] = []
    model.train()
    for step, idx in _batches(data.shape[0], training["batch_size"], seed, steps):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA06, step]))
        x = data[torch.from_numpy(idx)].to(dev, torch.float32)
        if method == "weakly_supervised":
            xa = (augment(x, rng, shift, gain) - mean_t) * inv_t
            assert y_t is not None and model.classifier is not None
            loss = F.cross_entropy(model.classifier(model(xa)), y_t[idx].to(dev))
        else:
            assert model.projector is not None
            v = torch.cat([augment(x, rng, shift, gain) for _ in range(2)])
            z = model.projector(model((v - mean_t) * inv_t))
            loss = nt_xent(z[: len(idx)], z[len(idx) :], temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if log is not None and (step % 50 == 0 or step == steps - 1):
            recent = float(np.mean(history[-50:]))
            log(f"step {step + 1}/{steps} loss {recent:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hcsflow train-embedder``."""
    parser.add_argument(
        "--samples", nargs="+", required=True, help="sample files (.npz) of write_sample"
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt); card: .md")
    parser.add_argument("--method", choices=METHODS, default="weakly_supervised")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--input-px", type=int, default=64, help="network input size (0: the crops' size)"
    )
    parser.add_argument("--widths", type=int, nargs="+", default=DEFAULT_ARCH["widths"])
    parser.add_argument("--blocks", type=int, nargs="+", default=DEFAULT_ARCH["blocks"])
    parser.add_argument("--dim", type=int, default=DEFAULT_ARCH["dim"])
    parser.add_argument(
        "--max-crops",
        type=int,
        default=20000,
        help="train on a seeded random subset of at most this many crops (0: all)",
    )
    parser.add_argument("--image-mpp", type=float, default=None, help="if not in the samples")
    parser.add_argument("--name", default=None, help="model name (default: file stem)")


def run(args: argparse.Namespace) -> int:
    """Read the samples, train, write checkpoint and card."""

    def log(msg: str) -> None:
        print(f"[train-embedder] {msg}", flush=True)

    for opt in ("steps", "batch_size", "input_px", "dim"):
        value = getattr(args, opt)
        if value is None or value < (0 if opt == "input_px" else 1):
            raise ValueError(f"--{opt.replace('_', '-')} must be positive, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if len(args.widths) != len(args.blocks):
        raise ValueError("--widths and --blocks need the same number of values")
    if args.max_crops is not None and args.max_crops < 0:
        raise ValueError(f"--max-crops must be >= 0, got {args.max_crops}")
    crops, meta = read_samples(args.samples, max_crops=args.max_crops or None, seed=args.seed)
    image_mpp = args.image_mpp or meta.attrs.get("image_mpp")
    if image_mpp is None:
        raise ValueError("--image-mpp: the sample files do not record the pixel size")
    labels, classes = treatment_labels(meta["Metadata_Treatment"].tolist())
    data = {
        "files": len(args.samples),
        "crops_available": int(meta.attrs["n_available"]),
        "plates": sorted(map(str, meta["Metadata_Plate"].unique())),
        "fields": int(meta.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]).ngroups),
        "roles": {
            str(k): int(v) for k, v in meta["Metadata_Role"].value_counts().sort_index().items()
        },
        "crops_per_class": {
            "min": int(np.bincount(labels).min()),
            "median": float(np.median(np.bincount(labels))),
            "max": int(np.bincount(labels).max()),
        },
    }
    log(
        f"{crops.shape[0]} crops {tuple(crops.shape[1:])} from {data['fields']} fields, "
        f"{len(classes)} treatments"
    )
    ckpt = train_embedder(
        crops,
        labels if args.method == "weakly_supervised" else None,
        method=args.method,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        device=args.device,
        threads=args.threads,
        log=log,
        input_px=args.input_px or None,
        arch={"widths": args.widths, "blocks": args.blocks, "dim": args.dim},
        classes=classes if args.method == "weakly_supervised" else None,
        channel_names=meta.attrs.get("channel_names"),
        image_mpp=float(image_mpp),
        data=data,
        name=args.name,
    )
    parts = ["hcsflow", "train-embedder"]
    for key, value in vars(args).items():
        if value is None or key == "func":
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    ckpt["config"]["command"] = " ".join(shlex.quote(p) for p in parts)
    out = save_embedder(ckpt, args.out)
    tr = ckpt["config"]["training"]
    log(
        f"wrote {out} and {out.with_suffix('.md')}: loss {tr['initial_loss']:.3f} -> "
        f"{tr['final_loss']:.3f} in {tr['train_seconds']:.0f} s"
    )
    return 0
