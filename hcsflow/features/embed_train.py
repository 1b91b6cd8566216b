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

Data
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
Checkpoint (:func:`save_embedder`)
    ``{"format": "hcsflow-embedder-1", "state_dict": ..., "config": {...}}`` (see
    :func:`train_embedder`) written atomically, with a Markdown model card beside it;
    :meth:`hcsflow.features.embed.Embedder.load` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.features.crops import cell_centres, crop_origins, gather_crops, pad_image

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

#: Metadata columns every sample file holds (one row per crop).
SAMPLE_COLUMNS = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_ObjectNumber",
    "Metadata_Treatment",
    "Metadata_Role",
)

#: ``format`` of sample files.
SAMPLE_FORMAT = "hcsflow-crops-1"

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

LICENCE = "BSD-3-Clause (weights trained by the hcsflow user on their own images)"


# --------------------------------------------------------------------------------------------
# sampling and sample files


def _seed_sequence(seed: int | Sequence[int]) -> np.random.SeedSequence:
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def sample_crops(
    image: np.ndarray,
    nuclei: np.ndarray,
    cells: np.ndarray,
    n_max: int,
    rng_seed: int | Sequence[int],
    crop_px: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of a deterministic random subset of a field's cells, for training.

    Cells with pixels are shuffled with ``rng_seed``; cells whose crop lies wholly inside the
    field come first, border cells only fill up when there are fewer than ``n_max`` others.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        Illumination-corrected field.
    nuclei, cells : ndarray of int, shape (H, W)
        Labels; cell ``k`` contains nucleus ``k``.
    n_max : int
        Most crops to return.
    rng_seed : int or sequence of int
        Seed of the choice (e.g. ``(plate_hash, well_index, site)``).
    crop_px : int
        Crop edge in pixels (e.g. ``crop_size_px(crop_um, image_mpp)``).

    Returns
    -------
    crops : ndarray of float16, shape (k, C, crop_px, crop_px), ``k <= n_max``
        Values beyond float16's range are clipped to it.
    object_numbers : ndarray of int64, shape (k,)
        Cell labels of the crops, ascending.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if int(n_max) < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    n = int(np.max(cells, initial=0))
    centres = cell_centres(nuclei, cells, n)
    present = np.flatnonzero(np.isfinite(centres).all(axis=1))
    _, _, border = crop_origins(centres[present], crop_px, image.shape[1:])
    order = np.random.default_rng(_seed_sequence(rng_seed)).permutation(present.size)
    order = order[np.argsort(border[order], kind="stable")]  # interior cells first
    chosen = np.sort(present[order[: int(n_max)]])
    crops, _ = gather_crops(pad_image(image, crop_px), centres[chosen], crop_px, image.shape[1:])
    lim = float(np.finfo(np.float16).max)
    crops = np.clip(crops, -lim, lim).astype(np.float16)
    return crops, (chosen + 1).astype(np.int64)


def treatment_name(compound: str, dose_um: float) -> str:
    """A treatment's label: ``"<compound>@<dose>"`` (dose in µM, shortest form), e.g. ``"DMSO@0"``."""
    return f"{compound}@{float(dose_um):g}"


def treatment_labels(treatments: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer labels of treatment strings: their index among the sorted unique strings.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
    classes : list of str
    """
    classes, labels = np.unique(np.asarray(treatments, dtype=str), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), [str(c) for c in classes]


def write_sample(
    path: str | os.PathLike[str],
    crops: np.ndarray,
    metadata: pd.DataFrame,
    *,
    image_mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """Write crops and their metadata to an npz sample file (atomically).

    Parameters
    ----------
    path : path-like
    crops : ndarray, shape (N, C, S, S)
        Stored as float16.
    metadata : DataFrame
        ``N`` rows with at least :data:`SAMPLE_COLUMNS`; other columns are kept. Object
        columns are stored as strings.
    image_mpp : float, optional
        Pixel size of the crops (µm); recorded, and checked for equality across files.
    channel_names : sequence of str, optional
        ``C`` channel names; recorded and checked likewise.

    Returns
    -------
    Path
    """
    from hcsflow.io import atomic_path

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3]:
        raise ValueError(f"{path}: crops must have shape (N, C, S, S), got {crops.shape}")
    if len(metadata) != crops.shape[0]:
        raise ValueError(f"{path}: {crops.shape[0]} crops but {len(metadata)} metadata rows")
    missing = [c for c in SAMPLE_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(f"{path}: metadata lacks columns {missing}")
    if channel_names is not None and len(channel_names) != crops.shape[1]:
        raise ValueError(f"{path}: {len(channel_names)} channel names for {crops.shape[1]}")
    arrays: dict[str, np.ndarray] = {}
    for i, col in enumerate(metadata.columns):
        values = metadata[col].to_numpy()
        if values.dtype.kind not in "biuf":
            values = values.astype(str)
        arrays[f"meta_{i:03d}"] = values
    attrs = {
        "format": SAMPLE_FORMAT,
        "columns": [str(c) for c in metadata.columns],
        "image_mpp": None if image_mpp is None else float(image_mpp),
        "channel_names": None if channel_names is None else [str(c) for c in channel_names],
        "crop_px": int(crops.shape[2]),
    }
    lim = float(np.finfo(np.float16).max)
    data = np.clip(crops, -lim, lim).astype(np.float16)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, crops=data, attrs=np.array(json.dumps(attrs)), **arrays)
    return Path(path)


def _npz_array_shape(z: Any, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` of an open npz file, read from its header only."""
    with z.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(v) for v in shape)


def _read_sample_header(path: Path) -> tuple[dict[str, Any], pd.DataFrame, tuple[int, ...]]:
    """Attributes, metadata and crop shape of a sample file (crops not loaded)."""
    if not path.is_file():
        raise ValueError(f"sample file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            attrs = json.loads(str(z["attrs"]))
            if attrs.get("format") != SAMPLE_FORMAT:
                raise ValueError(f"sample file {path}: format {attrs.get('format')!r}")
            cols = {c: z[f"meta_{i:03d}"] for i, c in enumerate(attrs["columns"])}
            shape = _npz_array_shape(z, "crops")
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"sample file {path}: cannot read ({exc})") from exc
    if len(shape) != 4 or any(len(v) != shape[0] for v in cols.values()):
        raise ValueError(f"sample file {path}: crops {shape} do not match the metadata")
    return attrs, pd.DataFrame(cols), shape


def read_samples(
    paths: Sequence[str | os.PathLike[str]],
    max_crops: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Read and concatenate sample files written by :func:`write_sample`.

    Parameters
    ----------
    paths : sequence of path-like
    max_crops : int, optional
        Keep a seeded random subset of this many crops (in file and row order), reading one
        file at a time, so that memory stays bounded whatever the number of files.
    seed : int
        Seed of the subset.

    Returns
    -------
    crops : ndarray of float16, shape (N, C, S, S)
    metadata : DataFrame
        ``N`` rows, the files' columns (plus ``Metadata_SampleFile``); ``attrs`` holds
        ``image_mpp``, ``channel_names``, ``crop_px``, ``files`` and ``n_available``.

    Raises
    ------
    ValueError
        No paths, or a file that is not a sample file or disagrees with the first on crop
        shape, channels or pixel size (the message names it).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_samples: no sample files given")
    ref: dict[str, Any] = {}
    frames, shapes = [], []
    for path in paths:
        attrs, df, shape = _read_sample_header(path)
        if not frames:
            ref = dict(attrs)
        else:
            if shape[1:] != shapes[0][1:]:
                raise ValueError(
                    f"sample file {path}: crops of shape {shape[1:]}, "
                    f"expected {shapes[0][1:]} as in {paths[0]}"
                )
            for key in ("channel_names", "image_mpp"):
                if attrs.get(key) is not None and ref.get(key) is not None:
                    if attrs[key] != ref[key]:
                        raise ValueError(
                            f"sample file {path}: {key} {attrs[key]} differs from "
                            f"{ref[key]} of {paths[0]}"
                        )
                elif ref.get(key) is None:
                    ref[key] = attrs.get(key)
        df["Metadata_SampleFile"] = str(path)
        frames.append(df)
        shapes.append(shape)
    sizes = np.array([s[0] for s in shapes])
    total = int(sizes.sum())
    keep = np.arange(total)
    if max_crops is not None and total > int(max_crops):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A3]))
        keep = np.sort(rng.choice(total, int(max_crops), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    crops = np.empty((keep.size, *shapes[0][1:]), dtype=np.float16)
    meta_parts = []
    filled = 0
    for i, path in enumerate(paths):
        rows = keep[(keep >= starts[i]) & (keep < starts[i + 1])] - starts[i]
        if rows.size == 0:
            continue
        with np.load(path, allow_pickle=False) as z:
            data = z["crops"]
        crops[filled : filled + rows.size] = data[rows]
        del data
        filled += rows.size
        meta_parts.append(frames[i].iloc[rows])
    meta = pd.concat(meta_parts, ignore_index=True)
    meta.attrs = {
        "image_mpp": ref.get("image_mpp"),
        "channel_names": ref.get("channel_names"),
        "crop_px": int(shapes[0][-1]),
        "files": [str(p) for p in paths],
        "n_available": total,
    }
    return crops, meta


# --------------------------------------------------------------------------------------------
# training


def channel_statistics(crops: np.ndarray, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of every channel over all crops' pixels (float64).

    Parameters
    ----------
    crops : ndarray, shape (N, C, S, S)

    Returns
    -------
    mean, std : list of float, length C
        ``std`` is 1 for a constant channel.
    """
    c = crops.shape[1]
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    for i in range(0, crops.shape[0], chunk):
        x = np.asarray(crops[i : i + chunk], dtype=np.float64)
        s1 += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / max(count, 1)
    var = np.maximum(s2 / max(count, 1) - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1e-12), std, 1.0)
    std = np.where(std > 0, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def _resize_all(crops: np.ndarray, size: int, chunk: int = 512) -> Any:
    """Crops (N, C, S, S) -> float16 tensor (N, C, size, size), resized on the CPU."""
    import torch

    from hcsflow.features.embed import resize_crops

    n, c = crops.shape[:2]
    out = torch.empty((n, c, size, size), dtype=torch.float16)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            x = torch.from_numpy(np.asarray(crops[i : i + chunk], dtype=np.float32))
            out[i : i + chunk] = resize_crops(x, size).to(torch.float16)
    return out


def augment(x: Any, rng: np.random.Generator, shift: int, gain: float) -> Any:
    """Random flip/90° rotation, integer shift (zero fill) and per-channel gain of a batch.

    Parameters
    ----------
    x : Tensor, shape (B, C, S, S)
        Raw (not normalized) crops.
    rng : numpy.random.Generator
        Source of every random draw (deterministic).
    shift : int
        Maximal shift in pixels along each axis.
    gain : float
        Log-standard deviation of the multiplicative gain of each crop and channel.

    Returns
    -------
    Tensor, shape (B, C, S, S)
    """
    import torch

    b, c, s, _ = x.shape
    dev = x.device
    if shift > 0:
        dy = torch.from_numpy(rng.integers(-shift, shift + 1, b)).to(dev)
        dx = torch.from_numpy(rng.integers(-shift, shift + 1, b)).to(dev)
        xp = torch.nn.functional.pad(x, [shift, shift, shift, shift])
        ar = torch.arange(s, device=dev)
        rows = (shift + dy)[:, None] + ar
        cols = (shift + dx)[:, None] + ar
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.from_numpy(rng.integers(0, 2, b).astype(bool)).to(dev)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    k = rng.integers(0, 4, b)
    out = x.clone()
    for r in (1, 2, 3):
        sel = np.flatnonzero(k == r)
        if sel.size:
            idx = torch.from_numpy(sel).to(dev)
            out[idx] = torch.rot90(x[idx], r, (2, 3))
    if gain > 0:
        g = np.exp(rng.normal(0.0, gain, (b, c, 1, 1))).astype(np.float32)
        out = out * torch.from_numpy(g).to(dev)
    return out


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
    import torch
    import torch.nn.functional as F

    from hcsflow.features.embed import CHECKPOINT_FORMAT, resolve_device
    from hcsflow.features.embed_nets import CellCNN, count_parameters

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
    arch_cfg = {**DEFAULT_ARCH, **dict(arch or {})}
    px = s if input_px is None else int(input_px)
    aug = AUGMENT[method]
    shift = max(1, int(round(aug["shift"] * px)))
    t0 = time.perf_counter()
    with _Determinism(seed, threads, cuda=dev.startswith("cuda")):
        data_t = _resize_all(crops, px)
        mean, std = channel_statistics(data_t.numpy())
        mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
        inv_t = 1.0 / torch.tensor(std, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
        model = CellCNN(
            c,
            widths=arch_cfg["widths"],
            blocks=arch_cfg["blocks"],
            dim=int(arch_cfg["dim"]),
            n_classes=n_classes,
            proj_dim=128 if method == "self_supervised" else 0,
            first_stride=int(arch_cfg["first_stride"]),
        ).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=int(steps), pct_start=0.1 if steps > 20 else 0.3
        )
        y_t = None if y_all is None else torch.from_numpy(y_all)
        history: list[float] = []
        model.train()
        for step, idx in _batches(n, int(batch_size), int(seed), int(steps)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA06, step]))
            x = data_t[torch.from_numpy(idx)].to(dev, torch.float32)
            if method == "weakly_supervised":
                xa = (augment(x, rng, shift, aug["gain"]) - mean_t) * inv_t
                assert y_t is not None and model.classifier is not None
                loss = F.cross_entropy(model.classifier(model(xa)), y_t[idx].to(dev))
            else:
                assert model.projector is not None
                v = torch.cat([augment(x, rng, shift, aug["gain"]) for _ in range(2)])
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
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    tail = max(1, min(50, len(history) // 10 or 1))
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
        "training": {
            "steps": int(steps),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "seed": int(seed),
            "threads": None if threads is None else int(threads),
            "device": dev,
            "augmentation": {"shift_px": shift, "gain_log_sd": aug["gain"], "dihedral": True},
            "temperature": float(temperature) if method == "self_supervised" else None,
            "initial_loss": float(np.mean(history[:tail])),
            "final_loss": float(np.mean(history[-tail:])),
            "loss_history": [round(v, 5) for v in history],
            "train_seconds": round(seconds, 2),
            "torch": str(torch.__version__),
        },
        "data": {"n_crops": int(n), "n_classes": int(n_classes), **dict(data or {})},
        "licence": LICENCE,
    }
    return {"format": CHECKPOINT_FORMAT, "state_dict": state, "config": cfg}


# --------------------------------------------------------------------------------------------
# checkpoint and model card


def save_embedder(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a checkpoint of :func:`train_embedder` and its model card, atomically.

    The card is ``path`` with the suffix ``.md``. A checkpoint without a name takes the
    file's stem.

    Returns
    -------
    Path
        The checkpoint's path.
    """
    import torch

    from hcsflow.io import atomic_path

    path = Path(path)
    if "state_dict" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path}: checkpoint needs 'state_dict' and 'config'")
    ckpt = dict(checkpoint)
    cfg = dict(ckpt["config"])
    if not cfg.get("name"):
        cfg["name"] = path.stem
    ckpt["config"] = cfg
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    write_model_card(cfg, path.with_suffix(".md"))
    return path


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if isinstance(v, (int, np.integer)) else "?"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_model_card(config: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the Markdown model card of an embedder checkpoint's ``config`` (atomically)."""
    from hcsflow.io import atomic_path

    tr = dict(config.get("training", {}))
    data = dict(config.get("data", {}))
    arch = dict(config.get("arch", {}))
    hist = tr.pop("loss_history", [])
    method = config.get("method", "")
    what = {
        "weakly_supervised": "weakly supervised: the network classifies each crop's treatment "
        "(compound x dose; the negative control is one class); the embedding is the pooled "
        "layer under the classifier",
        "self_supervised": "self-supervised (SimCLR): two augmented views of each crop are "
        "pulled together against the other crops of the batch (NT-Xent); the embedding is "
        "the pooled layer under the projection head",
    }.get(method, method)
    lines = [
        f"# Cell embedder `{config.get('name')}`",
        "",
        f"Small all-channel ResNet (`hcsflow.features.embed_nets.CellCNN`), trained {what}.",
        "",
        f"- Architecture: `{json.dumps(arch)}`, {_fmt_int(config.get('parameters'))} parameters "
        f"(embedding network), embedding dimension {arch.get('dim')}",
        f"- Crops: {_fmt(config.get('crop_um'))} µm ({config.get('crop_px')} px at "
        f"{config.get('image_mpp')} µm/px), centred on the nucleus, resized to "
        f"{config.get('input_px')} px",
        f"- Channels: {', '.join(config.get('channel_names') or []) or 'unnamed'}",
        "- Normalization: per channel, mean and standard deviation of the training crops: "
        f"`{json.dumps(config.get('normalization'))}`",
        f"- Licence: {config.get('licence', LICENCE)}",
        "",
        "## Data",
        "",
        "```json",
        json.dumps(data, indent=1, default=str)[:6000],
        "```",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in tr.items()]
    if hist:
        k = max(1, len(hist) // 10)
        pts = [
            (i + 1, float(np.mean(hist[max(0, i + 1 - k) : i + 1])))
            for i in range(k - 1, len(hist), k)
        ]
        lines += [
            "",
            f"Loss (mean of the last {k} steps):",
            "",
            "| step | loss |",
            "|---|---|",
        ]
        lines += [f"| {i} | {v:.4f} |" for i, v in pts]
    if config.get("classes"):
        lines += ["", f"Classes ({len(config['classes'])}): " + ", ".join(config["classes"][:200])]
    if config.get("command"):
        lines += ["", "## Command", "", "```", str(config["command"]), "```"]
    lines.append("")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines), encoding="utf-8")
    return Path(path)


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
