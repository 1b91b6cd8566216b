"""Embedder checkpoints on disk: :func:`save_embedder` and the Markdown model card.

A checkpoint is ``{"format": "hcsflow-embedder-1", "state_dict": ..., "config": {...}}``
(see :func:`hcsflow.features.embed_train.train_embedder`), saved with ``torch.save`` (plain
dicts, lists, numbers and tensors: no classes are pickled, and
:meth:`hcsflow.features.embed.Embedder.load` reads it with ``weights_only=True``), written
atomically with the card ``<name>.md`` beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LICENCE", "save_embedder", "write_model_card"]

LICENCE = "BSD-3-Clause (weights trained by the hcsflow user on their own images)"


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
