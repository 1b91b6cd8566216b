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


def run(args: argparse.Namespace) -> int:
    """Train, validate, write the checkpoint and the model card."""
    from hcsflow.segmentation.model import HEADS, count_parameters, load_checkpoint, save_checkpoint

    def log(msg: str) -> None:
        print(f"[train-segmenter] {msg}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields: dict[str, list[Field]] = {}
    val_ids: list[str] = []
    train_ids: list[str] = []
    t_start = time.time()
    if args.dsb:
        val_ids = dsb_split(args.dsb, "validation")
        train_ids = dsb_split(args.dsb, "train")
        fields["dsb"] = load_dsb(args.dsb, train_ids, args.nuclear_diameter)
        log(f"DSB2018: {len(train_ids)} training, {len(val_ids)} validation images")
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
        log(f"simulated: {len(fields['sim'])} training, {len(sim_val)} validation fields")
    for folder in args.user:
        fields.setdefault("user", []).extend(
            load_user_folder(folder, args.user_mpp, args.model_mpp)
        )
    if not any(fields.values()):
        raise ValueError("no training data: give --dsb, --sim or --user")
    arch = {"in_channels": 2, "widths": tuple(args.widths), "blocks": tuple(args.blocks)}
    init = None
    if args.init:
        init, _ = load_checkpoint(args.init)
    mix = {"dsb": args.mix_dsb, "sim": args.mix_sim, "user": args.mix_user}
    base_meta = {
        "model_mpp": args.model_mpp,
        "nuclear_diameter_px": args.nuclear_diameter,
        "heads": list(HEADS),
        "arch": {"in_channels": 2, "widths": list(args.widths), "blocks": list(args.blocks)},
        "normalization": _norm_kwargs(),
        "postprocess": postprocess_params(args.nuclear_diameter),
    }

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
        mix=mix,
        scale_range=tuple(args.scale_range),
        p_no_cyto=args.p_no_cyto,
        arch=arch,
        threads=args.threads,
        log=log,
        model=init,
        device=args.device,
        snapshot=snapshot,
        snapshot_every=args.snapshot_every,
    )
    train_s = time.time() - t_train
    metrics: dict[str, Any] = {}
    if val_ids:
        metrics["dsb2018_val"] = evaluate_dsb(
            model, args.dsb, val_ids, args.nuclear_diameter, base_meta["postprocess"]
        )
        log(f"DSB2018 validation: {metrics['dsb2018_val']}")
    if sim_val:
        post = base_meta["postprocess"]
        metrics["sim_val"] = evaluate_fields(model, sim_val, post)
        metrics["sim_val_nuclear_only"] = evaluate_fields(model, sim_val, post, use_cytoplasm=False)
        log(f"simulated validation: {metrics['sim_val']}")
    name = args.name or out.stem
    command = command_line(args)
    card = {
        "name": name,
        "licence": "BSD-3-Clause (weights trained by the hcsflow authors); DSB2018 data CC0",
        "data": {
            "dsb2018": {
                "root": str(args.dsb) if args.dsb else None,
                "train_images": len(train_ids),
                "val_images": len(val_ids),
                "split": f"validation when int(sha1(id)[:8], 16) % 100 < {DSB_VAL_PERCENT}",
                "val_ids": val_ids,
            },
            "simulated": {
                "train_fields": args.sim,
                "seeds": [args.sim_seed, args.sim_seed + args.sim - 1] if args.sim else None,
                "val_seeds": (
                    [
                        args.sim_seed + VALIDATION_OFFSET,
                        args.sim_seed + VALIDATION_OFFSET + args.sim_val - 1,
                    ]
                    if sim_val
                    else None
                ),
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
            "mix": mix,
            "p_no_cyto": args.p_no_cyto,
            "scale_range": list(args.scale_range),
        },
        "metrics": metrics,
        "command": command,
        "parameters": count_parameters(model),
    }
    card_path = save_with_card(out, model, {**base_meta, "card": card})
    log(f"wrote {out} and {card_path} in {time.time() - t_start:.0f} s")
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


def write_card(path: str | Path, meta: dict[str, Any]) -> None:
    """Write the Markdown model card of a checkpoint."""
    from hcsflow.io import atomic_path

    card = meta["card"]
    m = card.get("metrics", {})
    lines = [
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
        "## Validation metrics (at the end of training)",
        "",
        "F1 at IoU 0.5 and DSB score (mean over IoU 0.50:0.05:0.95 of TP / (TP + FP + FN)), "
        "mean per image, at the model's resolution; DSB2018 images rescaled by their annotated "
        "nuclear size; instances from the deep watershed "
        "(`hcsflow.segmentation.postprocess`) with the settings above.",
        "",
        "| data | objects | F1@0.5 | DSB score | images |",
        "|---|---|---|---|---|",
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
    bench = card.get("benchmark")
    if bench:
        lines += [
            "",
            "## Benchmark through `Segmenter` (`benchmarks/segmentation_model.py`)",
            "",
            "Whole pipeline at the input resolution (normalize, rescale, tile, network, deep "
            "watershed, labels back to the input size).",
            "",
            "| data | objects | F1@0.5 | DSB score | images |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['data']} | {r['objects']} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |"
            for r in bench["rows"]
        ]
        lines += ["", f"Command: `{bench['command']}`"]
    for old in card.get("benchmark_history", []):
        lines += ["", f"### Earlier benchmark: {old.get('setting', '')}", ""]
        lines += ["| data | objects | F1@0.5 | DSB score | images |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['data']} | {r['objects']} | {r['f1_05']:.3f} | {r['dsb']:.3f} | {r['n']} |"
            for r in old["rows"]
        ]
        lines += ["", f"Command: `{old['command']}`"]
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    lines += ["", "## Command", "", "```", card["command"], "```", ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
