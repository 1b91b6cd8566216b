"""The segmentation network: a small Mesmer-style encoder-decoder with six output heads.

Architecture
    A ResNet-style encoder (a 3x3 stem, then ``len(widths)`` stages of ``blocks`` basic
    residual blocks; every stage after the first halves the resolution with a stride-2 block)
    and a U-Net / feature-pyramid decoder (upsample x2, add the lateral 1x1 projection of the
    encoder stage, one residual block) back to full resolution, then one 3x3 conv + ReLU and a
    1x1 conv to the six output channels. Batch normalization is used throughout; predictions
    are made in ``eval()`` mode.

Input
    ``(B, 2, H, W)`` float32: the nuclear and the cytoplasm/membrane channel, each normalized
    to [0, 1] by :func:`hcsflow.segmentation.preprocess.prepare_input` (cytoplasm all zeros
    for nuclei-only assays), at the model's resolution ``meta["model_mpp"]`` µm/px. Any ``H``,
    ``W`` is accepted: the input is reflect-padded internally to a multiple of
    ``2 ** (len(widths) - 1)`` (:attr:`SegNet.multiple`) and the output cropped back, so the
    output always has the input's size.

Output
    ``(B, 6, H, W)`` float32 in the order :data:`HEADS`:

    ``nuc_inner``, ``cell_inner``
        regression of the per-object normalized inner distance (1 at the object's innermost
        point, 0 on background; :mod:`hcsflow.segmentation.targets`). Seeds for the deep
        watershed are its local maxima.
    ``nuc_outer``, ``cell_outer``
        regression of ``tanh(d / 8 px)``, ``d`` the distance to the nearest pixel outside the
        object (background or a neighbouring object).
    ``nuc_fg``, ``cell_fg``
        foreground **logits** (apply a sigmoid for probabilities).

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) are plain ``torch.save``
dictionaries of the state dict and a JSON-serializable ``meta`` dictionary with at least
``model_mpp``, ``heads``, ``arch`` (keyword arguments of :class:`SegNet`), ``normalization``
(keyword arguments of :func:`~hcsflow.segmentation.preprocess.normalize`) and ``card``
(data, split, metrics, licence, command).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Output channels of :class:`SegNet`, in order.
HEADS = ("nuc_inner", "nuc_outer", "nuc_fg", "cell_inner", "cell_outer", "cell_fg")

#: Keys every checkpoint's ``meta`` must hold.
REQUIRED_META = ("model_mpp", "heads", "arch", "normalization", "card")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class SegNet(nn.Module):
    """Mesmer-style nuclear + whole-cell segmentation network.

    Parameters
    ----------
    in_channels : int
        Input channels (2: nuclear, cytoplasm).
    widths : tuple of int
        Channel widths of the encoder stages, finest first. Stage ``k`` works at
        ``1 / 2**k`` of the input resolution.
    blocks : int or tuple of int
        Residual blocks per encoder stage (one number for all, or one per stage).
    """

    def __init__(
        self,
        in_channels: int = 2,
        widths: tuple[int, ...] = (8, 16, 32, 64, 128),
        blocks: int | tuple[int, ...] = (1, 1, 2, 2, 2),
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        nblocks = [int(blocks)] * len(widths) if isinstance(blocks, int) else list(blocks)
        if len(widths) < 2 or len(nblocks) != len(widths) or min(nblocks) < 1:
            raise ValueError(
                f"SegNet needs >= 2 stages and >= 1 block per stage, got {widths}, {blocks}"
            )
        self.arch = {"in_channels": in_channels, "widths": list(widths), "blocks": nblocks}
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList()
        cin = widths[0]
        for k, w in enumerate(widths):
            layers = [BasicBlock(cin, w, stride=1 if k == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(nblocks[k] - 1)]
            self.stages.append(nn.Sequential(*layers))
            cin = w
        self.lateral = nn.ModuleList(
            nn.Conv2d(widths[k], widths[k], 1) for k in range(len(widths) - 1)
        )
        self.reduce = nn.ModuleList(
            nn.Conv2d(widths[k + 1], widths[k], 1) for k in range(len(widths) - 1)
        )
        self.decode = nn.ModuleList(
            BasicBlock(widths[k], widths[k]) for k in range(len(widths) - 1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(widths[0], widths[0], 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], len(HEADS), 1),
        )
        self.multiple = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict the six maps.

        Parameters
        ----------
        x : Tensor of shape (B, 2, H, W)

        Returns
        -------
        Tensor of shape (B, 6, H, W)
        """
        if x.ndim != 4:
            raise ValueError(f"SegNet expects (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        feats = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        y = feats[-1]
        for k in range(len(feats) - 2, -1, -1):
            y = F.interpolate(self.reduce[k](y), size=feats[k].shape[-2:], mode="nearest")
            y = self.decode[k](y + self.lateral[k](feats[k]))
        return self.head(y)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(path: str | os.PathLike[str], model: SegNet, meta: dict[str, Any]) -> None:
    """Write the model's weights and ``meta`` atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.pt`` file.
    model : SegNet
    meta : dict
        JSON-serializable; must hold :data:`REQUIRED_META` except ``arch`` and ``heads``,
        which are taken from the model when missing.
    """
    from hcsflow.io import atomic_path

    meta = dict(meta)
    meta.setdefault("arch", model.arch)
    meta.setdefault("heads", list(HEADS))
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta for {path} lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": "hcsflow-segnet-1", "meta": meta, "state_dict": state}, tmp)


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SegNet, dict[str, Any]]:
    """Rebuild a :class:`SegNet` from a checkpoint, in eval mode on ``device``.

    Returns
    -------
    model : SegNet
    meta : dict
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"segmentation checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise ValueError(f"{path} is not an hcsflow segmentation checkpoint")
    meta = blob["meta"]
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} lacks meta keys {missing}")
    if tuple(meta["heads"]) != HEADS:
        raise ValueError(f"checkpoint {path} has heads {meta['heads']}, expected {list(HEADS)}")
    arch = dict(meta["arch"])
    model = SegNet(
        in_channels=int(arch["in_channels"]),
        widths=tuple(arch["widths"]),
        blocks=tuple(int(b) for b in arch["blocks"]),
    )
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, meta


def average_checkpoints(
    paths: list[str] | list[os.PathLike[str]],
) -> tuple[SegNet, list[dict[str, Any]]]:
    """The uniform weight average ("model soup") of checkpoints of one architecture.

    Networks fine-tuned from the same starting weights with different seeds lie in one basin
    of the loss, so the mean of their weights is itself a good network and usually a better
    one than each (Wortsman et al. 2022, *Model soups*). Floating-point tensors (weights and
    the batch-normalization running statistics) are averaged in float64 and cast back;
    integer tensors (batch counters) are taken from the first checkpoint.

    Parameters
    ----------
    paths : list of path-like
        Two or more checkpoints (:func:`save_checkpoint`).

    Returns
    -------
    model : SegNet
        The averaged network, in eval mode on the CPU.
    metas : list of dict
        The ``meta`` of each checkpoint, in order.

    Raises
    ------
    ValueError
        Fewer than two checkpoints, or a checkpoint whose architecture, heads, resolution or
        normalization differs from the first one (named in the message).
    """
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    model, first = load_checkpoint(paths[0])
    metas = [first]
    acc = {
        k: v.to(torch.float64).clone()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    keys = ("arch", "heads", "model_mpp", "nuclear_diameter_px", "normalization")
    for path in paths[1:]:
        other, meta = load_checkpoint(path)
        for key in keys:
            if meta.get(key) != first.get(key):
                raise ValueError(
                    f"checkpoint {path} has {key} {meta.get(key)!r}, but {paths[0]} has "
                    f"{first.get(key)!r}: only checkpoints of one architecture and input "
                    "convention can be averaged"
                )
        for k, v in other.state_dict().items():
            if k in acc:
                acc[k] += v.to(torch.float64)
        metas.append(meta)
    state = model.state_dict()
    for k, v in acc.items():
        state[k] = (v / len(paths)).to(state[k].dtype)
    model.load_state_dict(state)
    return model.eval(), metas
