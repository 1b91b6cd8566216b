"""The networks an :class:`~hcsflow.features.embed.Embedder` runs, and reading them from disk.

* ``"imagenet"``: EfficientNet-lite0 (:mod:`hcsflow.features.embed_nets`) fused, with a
  one-channel stem (:func:`_grey_lite0`), applied to every channel scaled to [-1, 1]
  (:class:`_ImagenetNet`).
* trained checkpoints (``{"state_dict", "config"}``): :func:`read_checkpoint` checks the
  file, :func:`build_model` rebuilds the :class:`~hcsflow.features.embed_nets.CellCNN`, and
  :func:`checkpoint_net` wraps the fused network with resizing and the stored per-channel
  normalization (:class:`_NormalizedNet`).
* TorchScript archives: :func:`read_torchscript` loads the module and the settings that
  :func:`torchscript_module` and :meth:`~hcsflow.features.embed.Embedder.save_torchscript`
  put into archives written by hcsflow.

torch is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGENET_DIM",
    "TORCHSCRIPT_META",
    "build_model",
    "checkpoint_net",
    "imagenet_net",
    "read_checkpoint",
    "read_torchscript",
    "resize_crops",
    "torchscript_module",
]

#: Per-channel width of the ImageNet embedder.
IMAGENET_DIM = 1280

#: Name of the JSON settings file inside TorchScript archives written by
#: :meth:`~hcsflow.features.embed.Embedder.save_torchscript`.
TORCHSCRIPT_META = "hcsflow_embedder.json"


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def resize_crops(x: Any, size: int) -> Any:
    """Resize a batch of crops (torch tensor (N, C, S, S)) to ``size`` (bilinear, antialiased)."""
    import torch.nn.functional as F

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class _ImagenetNet:
    """EfficientNet-lite0 per channel: (N, C, S, S) raw -> (N, 1280 C)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any) -> Any:
        n, c, h, w = x.shape
        g = x.reshape(n * c, 1, h, w)
        lo = g.amin(dim=(2, 3), keepdim=True)
        hi = g.amax(dim=(2, 3), keepdim=True)
        span = hi - lo
        g = (g - lo) / span.clamp_min(1e-12) * (span > 0)
        return self.model(g * 2.0 - 1.0).reshape(n, c * IMAGENET_DIM)


def _grey_lite0(model: Any) -> Any:
    """A fused copy of EfficientNet-lite0 whose stem takes one grey channel.

    A grey image replicated to RGB and normalized alike in the three colours convolves
    exactly as the grey image with the stem weights summed over colours.
    """
    import torch

    from hcsflow.features.embed_nets import SameConv2d

    fused = model.fuse()
    stem = fused._conv_stem
    grey = SameConv2d(1, stem.out_channels, stem.kernel_size, stem.stride, bias=True)
    with torch.no_grad():
        grey.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        grey.bias.copy_(stem.bias)
    fused._conv_stem = grey
    return fused.eval()


class _NormalizedNet:
    """Resize to ``input_px`` (when set), normalize per channel ``(x - mean) / std``, network."""

    def __init__(self, model: Any, mean: Any, std: Any, input_px: int | None) -> None:
        self.model = model
        self.mean = mean.reshape(1, -1, 1, 1)
        self.inv_std = 1.0 / std.reshape(1, -1, 1, 1)
        self.input_px = input_px

    def __call__(self, x: Any) -> Any:
        if self.input_px is not None:
            x = resize_crops(x, self.input_px)
        return self.model((x - self.mean) * self.inv_std)


def imagenet_net(dev: str, channels_last: bool) -> _ImagenetNet:
    """The ``"imagenet"`` network on ``dev``: grey-stem EfficientNet-lite0 per channel."""
    from hcsflow.features.embed_nets import load_imagenet_lite0

    model = _grey_lite0(load_imagenet_lite0()).to(dev)
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return _ImagenetNet(model)


def read_torchscript(path: Path, dev: str) -> tuple[Any, dict[str, Any]]:
    """Load a TorchScript archive on ``dev`` (eval mode) with its hcsflow settings, if any.

    Returns
    -------
    module : torch.jit.ScriptModule
    meta : dict
        The archive's ``extra/hcsflow_embedder.json`` (empty for other archives).

    Raises
    ------
    ValueError
        An archive that TorchScript cannot load (the message names the file).
    """
    import torch

    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
    except Exception as exc:  # a corrupt archive: a clear message naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"embedder {path}: cannot load TorchScript file ({first})") from exc
    module.eval()
    meta: dict[str, Any] = {}
    if extra[TORCHSCRIPT_META]:
        meta = json.loads(extra[TORCHSCRIPT_META])
    return module, meta


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``state_dict`` and ``config`` of a checkpoint file (read with ``weights_only``).

    Raises
    ------
    ValueError
        A file that is not a readable ``{"state_dict", "config"}`` dict whose config has an
        ``arch`` (the message names the file).
    """
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"embedder {path}: not a readable checkpoint ({first})") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(
            f"embedder {path}: not an embedder checkpoint (expected a dict with "
            "'state_dict' and 'config', or a TorchScript file)"
        )
    config = blob.get("config", blob.get("meta"))
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"embedder {path}: checkpoint has no 'config' with an 'arch'")
    return blob["state_dict"], config


def checkpoint_net(
    state_dict: dict[str, Any], config: dict[str, Any], path: Path, dev: str, channels_last: bool
) -> tuple[_NormalizedNet, dict[str, Any]]:
    """A trained checkpoint's fused network on ``dev`` with its resizing and normalization.

    Returns
    -------
    net : _NormalizedNet
        Maps RAW crops (N, C, S, S) to (N, dim).
    config : dict
        The checkpoint's configuration (see :func:`build_model`).
    """
    import torch

    model, cfg = build_model(state_dict, config, str(path))
    fused = model.fuse().to(dev)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    norm = cfg["normalization"]
    mean = torch.tensor(norm["mean"], dtype=torch.float32, device=dev)
    std = torch.tensor(norm["std"], dtype=torch.float32, device=dev)
    input_px = cfg.get("input_px")
    return _NormalizedNet(fused, mean, std, None if input_px is None else int(input_px)), cfg


def torchscript_module(net: _NormalizedNet) -> Any:
    """A traceable ``nn.Module`` (float32, CPU, eval mode) of a checkpoint's network.

    It takes RAW crops, resizes them to ``net.input_px`` (when set) and normalizes them as
    ``net`` does.
    """
    import torch

    class _Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = net.model.float().cpu()
            self.register_buffer("mean", net.mean.float().cpu())
            self.register_buffer("inv_std", net.inv_std.float().cpu())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = net.input_px
            if s is not None:
                x = torch.nn.functional.interpolate(
                    x, size=(s, s), mode="bilinear", align_corners=False, antialias=True
                )
            return self.model((x - self.mean) * self.inv_std)

    return _Wrapper().eval()


def build_model(
    state_dict: dict[str, Any], config: dict[str, Any], source: str = "checkpoint"
) -> tuple[Any, dict[str, Any]]:
    """Rebuild a :class:`~hcsflow.features.embed_nets.CellCNN` from weights and config.

    Parameters
    ----------
    state_dict : dict of str to Tensor
    config : dict
        Needs ``arch`` (``in_channels``, ``widths``, ``blocks``, ``dim``, optional
        ``n_classes``/``proj_dim``), ``normalization`` (``mean``, ``std`` per channel) and
        ``crop_um``; optional ``input_px``, ``channel_names``, ``name``.
    source : str
        Named in error messages.

    Returns
    -------
    model : CellCNN, eval mode on the CPU
    config : dict
    """
    from hcsflow.features.embed_nets import CellCNN

    arch = dict(config["arch"])
    if arch.get("name", "cellcnn") != "cellcnn":
        raise ValueError(f"embedder {source}: unknown architecture {arch.get('name')!r}")
    missing = [k for k in ("normalization", "crop_um") if k not in config]
    missing += [k for k in ("in_channels", "widths", "blocks", "dim") if k not in arch]
    if missing:
        raise ValueError(f"embedder {source}: config lacks {missing}")
    c = int(arch["in_channels"])
    norm = config["normalization"]
    if len(norm.get("mean", ())) != c or len(norm.get("std", ())) != c:
        raise ValueError(f"embedder {source}: normalization needs {c} means and stds")
    if min(float(s) for s in norm["std"]) <= 0:
        raise ValueError(f"embedder {source}: normalization std must be > 0")
    model = CellCNN(
        c,
        widths=arch["widths"],
        blocks=arch["blocks"],
        dim=int(arch["dim"]),
        n_classes=int(arch.get("n_classes", 0)),
        proj_dim=int(arch.get("proj_dim", 0)),
    )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"embedder {source}: weights do not fit the architecture: {exc}") from exc
    return model.eval(), dict(config)
