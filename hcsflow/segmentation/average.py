"""``hcsflow average-segmenters``: the uniform weight average of segmentation checkpoints.

Fine-tune one checkpoint several times with different seeds (``hcsflow train-segmenter
--init``), then average the results (:func:`hcsflow.segmentation.model.average_checkpoints`)::

    hcsflow average-segmenters --out models/soup.pt runs/a.pt runs/b.pt

The new checkpoint takes the input conventions and post-processing settings of the first one
(or of ``--postprocess-from``); its card lists the ingredients, their cards' commands and
the averaging command.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hcsflow average-segmenters``."""
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints (.pt)")
    parser.add_argument(
        "--out", required=True, help="checkpoint to write (.pt); card: .md beside it"
    )
    parser.add_argument("--name", default=None, help="model name in the card (default: stem)")
    parser.add_argument(
        "--postprocess-from",
        default=None,
        help="checkpoint whose post-processing settings the average takes (default: the first)",
    )


def run(args: argparse.Namespace) -> int:
    """Average, write the checkpoint and its card.

    A missing or mismatched checkpoint raises ``ValueError`` / ``FileNotFoundError`` naming
    the file, before the output is touched (the command line reports it, exit code 2).
    """
    from hcsflow.segmentation.commands import command_line, save_with_card
    from hcsflow.segmentation.model import (
        average_checkpoints,
        count_parameters,
        load_checkpoint,
    )

    out = Path(args.out)
    model, metas = average_checkpoints(args.checkpoints)
    meta = {k: v for k, v in metas[0].items() if k != "card"}
    if args.postprocess_from:
        _, source = load_checkpoint(args.postprocess_from)
        meta["postprocess"] = dict(source.get("postprocess", {}))
    first = metas[0]["card"]
    command = command_line(args, "average-segmenters", positional="checkpoints")
    ingredients = [
        {"checkpoint": str(p), "name": m["card"].get("name"), "command": m["card"].get("command")}
        for p, m in zip(args.checkpoints, metas, strict=True)
    ]
    card = {
        "name": args.name or out.stem,
        "licence": first.get("licence"),
        "data": first.get("data", {}),
        "training": {
            "average_of": ingredients,
            **{k: v for k, v in first.get("training", {}).items() if k != "train_seconds"},
        },
        "metrics": {},
        "command": command,
        "parameters": count_parameters(model),
        "notes": [
            f"Uniform average of the weights of {len(metas)} checkpoints (model soup); "
            "validation metrics of the average: see the benchmark table."
        ],
    }
    meta["card"] = card
    card_path = save_with_card(out, model, meta)
    print(f"[average-segmenters] wrote {out} and {card_path}", flush=True)
    return 0
