"""The ``hcsflow train-segmenter`` command, the workflow's training options and model cards.

:func:`run` trains, validates (:mod:`~hcsflow.segmentation.evaluation`) and writes the
checkpoint with its Markdown model card (:func:`write_card`); :func:`options_from_config`
turns the workflow's ``segmentation.train`` block into the command's options, with the
defaults of the configuration schema.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hcsflow.segmentation.evaluation import (
    DSB_VAL_PERCENT,
    SIM_SPLITS,
    VALIDATION_OFFSET,
    check_training_seeds,
    dsb_split,
    evaluate_dsb,
    evaluate_fields,
)
from hcsflow.segmentation.preprocess import _norm_kwargs
from hcsflow.segmentation.train import (
    Field,
    load_dsb,
    load_user_folder,
    postprocess_params,
    simulate_fields,
    train_model,
)

#: The workflow's configuration schema, the one source of the defaults of ``segmentation.train``.
SCHEMA = Path(__file__).resolve().parents[1] / "config.schema.yaml"


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
        "--sim-seed",
        type=int,
        default=SIM_SPLITS["train"],
        help="first seed of the simulated training fields",
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


def _log(msg: str) -> None:
    print(f"[train-segmenter] {msg}", flush=True)


@dataclass
class _TrainingData:
    """The fields of each training source and the validation data of a training run."""

    fields: dict[str, list[Field]]
    train_ids: list[str]
    val_ids: list[str]
    sim_val: list[Field]


def _training_data(args: argparse.Namespace) -> _TrainingData:
    """Load DSB2018 (train/validation split), simulate fields and load the user folders.

    Raises ``ValueError`` when no source gives a training field.
    """
    fields: dict[str, list[Field]] = {}
    val_ids: list[str] = []
    train_ids: list[str] = []
    if args.dsb:
        val_ids = dsb_split(args.dsb, "validation")
        train_ids = dsb_split(args.dsb, "train")
        fields["dsb"] = load_dsb(args.dsb, train_ids, args.nuclear_diameter)
        _log(f"DSB2018: {len(train_ids)} training, {len(val_ids)} validation images")
    sim_val: list[Field] = []
    if args.sim:
        shape = tuple(args.sim_shape)
        check_training_seeds(args.sim_seed, args.sim)
        fields["sim"] = simulate_fields(
            args.sim, args.sim_seed, shape, args.sim_mpp, args.model_mpp
        )
        if args.sim_val:
            sim_val = simulate_fields(
                args.sim_val, args.sim_seed + VALIDATION_OFFSET, shape, args.sim_mpp, args.model_mpp
            )
        _log(f"simulated: {len(fields['sim'])} training, {len(sim_val)} validation fields")
    for folder in args.user:
        fields.setdefault("user", []).extend(
            load_user_folder(folder, args.user_mpp, args.model_mpp)
        )
    if not any(fields.values()):
        raise ValueError("no training data: give --dsb, --sim or --user")
    return _TrainingData(fields, train_ids, val_ids, sim_val)


def _base_meta(args: argparse.Namespace) -> dict[str, Any]:
    """Checkpoint metadata that does not depend on the training's outcome."""
    from hcsflow.segmentation.model import HEADS

    return {
        "model_mpp": args.model_mpp,
        "nuclear_diameter_px": args.nuclear_diameter,
        "heads": list(HEADS),
        "arch": {"in_channels": 2, "widths": list(args.widths), "blocks": list(args.blocks)},
        "normalization": _norm_kwargs(),
        "postprocess": postprocess_params(args.nuclear_diameter),
    }


def _mix(args: argparse.Namespace) -> dict[str, float]:
    """Sampling weight of each training source."""
    return {"dsb": args.mix_dsb, "sim": args.mix_sim, "user": args.mix_user}


def _train(
    args: argparse.Namespace,
    fields: dict[str, list[Field]],
    base_meta: dict[str, Any],
    out: Path,
) -> tuple[Any, list[float], float]:
    """Train the network (from ``--init`` if given), writing snapshots beside ``out``.

    Returns the model, the loss history and the training time in seconds.
    """
    from hcsflow.segmentation.model import load_checkpoint, save_checkpoint

    arch = {"in_channels": 2, "widths": tuple(args.widths), "blocks": tuple(args.blocks)}
    init = None
    if args.init:
        init, _ = load_checkpoint(args.init)

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
        mix=_mix(args),
        scale_range=tuple(args.scale_range),
        p_no_cyto=args.p_no_cyto,
        arch=arch,
        threads=args.threads,
        log=_log,
        model=init,
        device=args.device,
        snapshot=snapshot,
        snapshot_every=args.snapshot_every,
    )
    return model, history, time.time() - t_train


def _validate(
    model: Any, args: argparse.Namespace, data: _TrainingData, post: dict[str, Any]
) -> dict[str, Any]:
    """Metrics on the DSB2018 validation images and the simulated validation fields."""
    metrics: dict[str, Any] = {}
    if data.val_ids:
        metrics["dsb2018_val"] = evaluate_dsb(
            model, args.dsb, data.val_ids, args.nuclear_diameter, post
        )
        _log(f"DSB2018 validation: {metrics['dsb2018_val']}")
    if data.sim_val:
        metrics["sim_val"] = evaluate_fields(model, data.sim_val, post)
        metrics["sim_val_nuclear_only"] = evaluate_fields(
            model, data.sim_val, post, use_cytoplasm=False
        )
        _log(f"simulated validation: {metrics['sim_val']}")
    return metrics


def _card(
    args: argparse.Namespace,
    out: Path,
    data: _TrainingData,
    metrics: dict[str, Any],
    history: list[float],
    train_s: float,
    model: Any,
) -> dict[str, Any]:
    """The model card's record: name, licence, data, training settings, metrics, command."""
    from hcsflow.segmentation.model import count_parameters

    sim_val_seeds = (
        [args.sim_seed + VALIDATION_OFFSET, args.sim_seed + VALIDATION_OFFSET + args.sim_val - 1]
        if data.sim_val
        else None
    )
    return {
        "name": args.name or out.stem,
        "licence": "BSD-3-Clause (weights trained by the hcsflow authors); DSB2018 data CC0",
        "data": {
            "dsb2018": {
                "root": str(args.dsb) if args.dsb else None,
                "train_images": len(data.train_ids),
                "val_images": len(data.val_ids),
                "split": f"validation when int(sha1(id)[:8], 16) % 100 < {DSB_VAL_PERCENT}",
                "val_ids": data.val_ids,
            },
            "simulated": {
                "train_fields": args.sim,
                "seeds": [args.sim_seed, args.sim_seed + args.sim - 1] if args.sim else None,
                "val_seeds": sim_val_seeds,
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
            "mix": _mix(args),
            "p_no_cyto": args.p_no_cyto,
            "scale_range": list(args.scale_range),
        },
        "metrics": metrics,
        "command": command_line(args),
        "parameters": count_parameters(model),
    }


def run(args: argparse.Namespace) -> int:
    """Train, validate, write the checkpoint and the model card."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    data = _training_data(args)
    base_meta = _base_meta(args)
    model, history, train_s = _train(args, data.fields, base_meta, out)
    metrics = _validate(model, args, data, base_meta["postprocess"])
    card = _card(args, out, data, metrics, history, train_s, model)
    card_path = save_with_card(out, model, {**base_meta, "card": card})
    _log(f"wrote {out} and {card_path} in {time.time() - t_start:.0f} s")
    return 0


def config_defaults(schema: str | Path = SCHEMA) -> dict[str, Any]:
    """Keys of the workflow's ``segmentation.train`` block and their defaults, from the schema.

    Parameters
    ----------
    schema : path
        ``hcsflow/config.schema.yaml``.

    Returns
    -------
    dict
    """
    from hcsflow.config import load_schema

    node = load_schema(schema)["properties"]["segmentation"]["properties"]["train"]
    return {k: copy.deepcopy(v.get("default")) for k, v in node["properties"].items()}


def options_from_config(
    train: dict[str, Any] | None, image_mpp: float, schema: str | Path = SCHEMA
) -> list[str]:
    """``hcsflow train-segmenter`` options from the workflow's ``segmentation.train`` block.

    Parameters
    ----------
    train : mapping or None
        Keys of the schema's ``segmentation.train`` block (missing keys take the schema's
        defaults, :func:`config_defaults`).
    image_mpp : float
        Pixel size of the simulated training fields (the workflow's ``image_mpp``).
    schema : path
        The configuration schema.

    Returns
    -------
    list of str
    """
    cfg = config_defaults(schema)
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


_METRICS_HEADER = ["| data | objects | F1@0.5 | DSB score | images |", "|---|---|---|---|---|"]


def _card_header(card: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The card's title, model description, data and training sections (Markdown lines)."""
    return [
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
    ]


def _validation_lines(m: dict[str, Any]) -> list[str]:
    """The card's table of validation metrics at the end of training (Markdown lines)."""
    lines = [
        "## Validation metrics (at the end of training)",
        "",
        "F1 at IoU 0.5 and DSB score (mean over IoU 0.50:0.05:0.95 of TP / (TP + FP + FN)), "
        "mean per image, at the model's resolution; DSB2018 images rescaled by their annotated "
        "nuclear size; instances from the deep watershed "
        "(`hcsflow.segmentation.postprocess`) with the settings above.",
        "",
        *_METRICS_HEADER,
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
    return lines


def _benchmark_rows(bench: dict[str, Any]) -> list[str]:
    """A benchmark's table rows and its command line (Markdown lines)."""
    lines = [
        f"| {r['data']} | {r['objects']} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |"
        for r in bench["rows"]
    ]
    return [*lines, "", f"Command: `{bench['command']}`"]


def _benchmark_lines(card: dict[str, Any]) -> list[str]:
    """The card's benchmark through :class:`Segmenter` and the earlier ones (Markdown lines)."""
    lines: list[str] = []
    bench = card.get("benchmark")
    if bench:
        lines += [
            "",
            "## Benchmark through `Segmenter` (`benchmarks/segmentation_model.py`)",
            "",
            "Whole pipeline at the input resolution (normalize, rescale, tile, network, deep "
            "watershed, labels back to the input size).",
            "",
            *_METRICS_HEADER,
            *_benchmark_rows(bench),
        ]
    for old in card.get("benchmark_history", []):
        lines += ["", f"### Earlier benchmark: {old.get('setting', '')}", ""]
        lines += [*_METRICS_HEADER, *_benchmark_rows(old)]
    return lines


def write_card(path: str | Path, meta: dict[str, Any]) -> None:
    """Write the Markdown model card of a checkpoint."""
    from hcsflow.io import atomic_path

    card = meta["card"]
    lines = _card_header(card, meta)
    lines += _validation_lines(card.get("metrics", {}))
    lines += _benchmark_lines(card)
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    lines += ["", "## Command", "", "```", card["command"], "```", ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
