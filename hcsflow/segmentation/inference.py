"""Running the segmentation network over tiles, and mapping its outputs to the input's grid.

A field at the network's working resolution is cut into tiles of one length per axis
(:func:`tile_layout`) that overlap; the network's outputs are blended with weights that fall
linearly to the tile edge over the overlap, so the assembled maps have no seams
(:func:`tiled_maps`). :func:`native_maps` resizes the maps to the input's shape and
:func:`pair_labels` keeps the nucleus/cell pairs that survive a resize of the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hcsflow.segmentation.preprocess import resize_float


def native_maps(maps: np.ndarray, shape: tuple[int, int], cells: bool = True) -> np.ndarray:
    """Network maps resized to the input's shape for post-processing there.

    Parameters
    ----------
    maps : ndarray of float32, shape (6, h, w)
        Maps at the working resolution (order of
        :data:`~hcsflow.segmentation.postprocess.HEADS`, foreground as probabilities).
    shape : tuple of int
        Target ``(H, W)``.
    cells : bool
        Resize the cell maps too; if False they are returned as zeros.

    Returns
    -------
    ndarray of float32, shape (6, H, W)
        Inner distances and foreground probabilities resized bilinearly (antialiased when
        shrinking); the outer distances, which the watershed does not use, are zeros.
    """
    idx = [0, 2, 3, 5] if cells else [0, 2]
    small = resize_float(np.ascontiguousarray(maps[idx]), shape)
    out = np.zeros((maps.shape[0], *shape), np.float32)
    out[idx] = small
    return out


def pair_labels(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep only labels present in both images, renumbered ``1..N`` in both the same way.

    Returns the two images and the number of pairs dropped.
    """
    top = int(max(nuclei.max(initial=0), cells.max(initial=0)))
    pn = np.bincount(nuclei.ravel(), minlength=top + 1) > 0
    pc = np.bincount(cells.ravel(), minlength=top + 1) > 0
    both = pn & pc
    both[0] = False
    lut = np.zeros(top + 1, dtype=np.uint32)
    lut[both] = np.arange(1, int(both.sum()) + 1, dtype=np.uint32)
    dropped = int(((pn | pc)[1:] & ~both[1:]).sum())
    return lut[nuclei], lut[cells], dropped


def tile_layout(size: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Balanced tiling of one axis: the fewest tiles of at most ``tile`` pixels overlapping by
    at least ``overlap``, all of one length (rounded up to ``multiple``, capped at ``size``).

    Returns the tile length and the start of each tile.
    """
    if size <= tile:
        return size, [0]
    n = -(-(size - overlap) // (tile - overlap))
    length = -(-(size + (n - 1) * overlap) // n)
    length = min(size, -(-length // multiple) * multiple)
    starts = np.linspace(0, size - length, n).round().astype(int).tolist()
    return length, starts


def _ramp(n: int, overlap: int) -> np.ndarray:
    i = np.arange(n)
    edge = np.minimum(i, n - 1 - i) + 1.0
    return np.clip(edge / (overlap + 1.0), 1e-3, 1.0).astype(np.float32)


def inference_model(model: Any) -> Any:
    """A copy of ``model`` prepared for fast inference (the input is not modified).

    Every batch normalization that follows a convolution (``convN``/``bnN`` attribute pairs and
    adjacent ``Conv2d``, ``BatchNorm2d`` in a ``Sequential``) is folded into the convolution's
    weights, and the weights are stored channels-last; outputs equal the original model's to
    float rounding. On CPU this makes the shipped network about a third faster.
    """
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        for i in range(1, 4):
            conv, bn = getattr(mod, f"conv{i}", None), getattr(mod, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(mod, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(mod, f"bn{i}", nn.Identity())
        if isinstance(mod, nn.Sequential):
            for j in range(len(mod) - 1):
                if isinstance(mod[j], nn.Conv2d) and isinstance(mod[j + 1], nn.BatchNorm2d):
                    mod[j] = fuse_conv_bn_eval(mod[j], mod[j + 1])
                    mod[j + 1] = nn.Identity()
    return model.to(memory_format=torch.channels_last)


def symmetry_mean(model: Callable[[Any], Any], t: Any) -> Any:
    """The mean of ``model`` over the 8 flips and 90-degree rotations of a batch.

    Parameters
    ----------
    model : callable
        A tensor ``(B, C, h, w)`` to logits ``(B, K, h, w)``.
    t : torch.Tensor, shape (B, C, h, w)

    Returns
    -------
    torch.Tensor of float32, shape (B, K, h, w)
        Each output transformed back to ``t``'s orientation; logits averaged.
    """
    import torch

    acc = None
    for k in range(4):
        for flip in (False, True):
            u = torch.rot90(t, k, dims=(2, 3))
            if flip:
                u = torch.flip(u, dims=(3,))
            u = u.contiguous(memory_format=torch.channels_last)
            y = model(u).float()
            if flip:
                y = torch.flip(y, dims=(3,))
            y = torch.rot90(y, -k, dims=(2, 3))
            acc = y if acc is None else acc + y
    return acc / 8.0


def tiled_maps(
    forward: Callable[[Any], Any],
    inputs: Sequence[np.ndarray],
    tile_size: int,
    tile_overlap: int,
    multiple: int,
    batch_size: int,
    device: str,
) -> list[np.ndarray]:
    """Network maps of whole inputs from its outputs on overlapping tiles, blended.

    Parameters
    ----------
    forward : callable
        The network: a tensor ``(B, 2, th, tw)`` on ``device`` to logits ``(B, 6, th, tw)``.
    inputs : sequence of ndarray of float32, shape (2, h_i, w_i)
        Normalized inputs at the network's working resolution.
    tile_size, tile_overlap : int
        Largest tile edge and smallest overlap (pixels), as in :func:`tile_layout`.
    multiple : int
        Tile edges are rounded up to a multiple of this (the network's stride).
    batch_size : int
        Tiles per forward pass; tiles of one shape, of any input, share a batch.
    device : str
        Where the tensors go (``"cpu"`` or ``"cuda[:N]"``).

    Returns
    -------
    list of ndarray of float32, shape (6, h_i, w_i)
        Inner and outer distances as predicted; foreground maps as probabilities.
    """
    import torch

    tsize, ovl = tile_size, tile_overlap
    acc = [np.zeros((6, *x.shape[-2:]), np.float32) for x in inputs]
    wsum = [np.zeros(x.shape[-2:], np.float32) for x in inputs]
    # tiles grouped by shape so that each batch is one tensor
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for k, x in enumerate(inputs):
        h, w = x.shape[-2:]
        th, ys = tile_layout(h, tsize, ovl, multiple)
        tw, xs = tile_layout(w, tsize, ovl, multiple)
        for y0 in ys:
            for x0 in xs:
                groups.setdefault((th, tw), []).append((k, y0, x0))
    with torch.inference_mode():
        for (th, tw), tiles in groups.items():
            weight = _ramp(th, ovl)[:, None] * _ramp(tw, ovl)[None, :]
            for b in range(0, len(tiles), batch_size):
                chunk = tiles[b : b + batch_size]
                batch = np.stack([inputs[k][:, y : y + th, x : x + tw] for k, y, x in chunk])
                t = torch.from_numpy(batch).to(device)
                t = t.contiguous(memory_format=torch.channels_last)
                y_out = forward(t).float().cpu().numpy()
                for (k, y, x), o in zip(chunk, y_out, strict=True):
                    acc[k][:, y : y + th, x : x + tw] += o * weight
                    wsum[k][y : y + th, x : x + tw] += weight
    out = []
    for a, s in zip(acc, wsum, strict=True):
        a /= s
        for c in (2, 5):  # foreground logits -> probabilities
            a[c] = 1.0 / (1.0 + np.exp(-a[c]))
        out.append(a)
    return out
