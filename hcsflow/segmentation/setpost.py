"""``hcsflow set-postprocess``: a checkpoint's weights with new deep-watershed settings.

The post-processing settings a checkpoint carries (``meta["postprocess"]``, read by
:class:`hcsflow.segmentation.Segmenter`) are chosen after training, on training-side data
(``benchmarks/tune_inference.py``). This command writes a copy of a checkpoint with some of
them changed, under a new name, so that a revision of the settings is a new model with its
own card and provenance rather than a silent change of a shipped one::

    hcsflow set-postprocess models/segmenter_v4.pt --out models/segmenter_v5.pt \\
        --name segmenter_v5 --set min_distance=3 merge_dynamic=0.075

The weights are copied unchanged. The card keeps the source's data, training record and
commands, appends this command, moves the source's benchmark table to its history, adds
``--note`` texts and keeps the source's notes, prefixed with its name.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hcsflow set-postprocess``."""
    parser.add_argument("checkpoint", help="source checkpoint (.pt)")
    parser.add_argument(
        "--out", required=True, help="checkpoint to write (.pt); card: .md beside it"
    )
    parser.add_argument("--name", default=None, help="model name in the card (default: stem)")
    parser.add_argument(
        "--set",
        nargs="+",
        required=True,
        metavar="KEY=VALUE",
        help="post-processing settings (PostprocessParams fields, lengths in model pixels)",
    )
    parser.add_argument("--note", action="append", default=[], help="a note for the card")


def parse_settings(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``["min_distance=3", "merge_dynamic=0.075"]`` -> typed settings.

    Values take the type of the :class:`PostprocessParams` field; an unknown key or a value
    of the wrong type raises ``ValueError`` naming it and the command-line ``option``.
    """
    from hcsflow.segmentation.postprocess import PostprocessParams

    types = {f.name: type(getattr(PostprocessParams(), f.name)) for f in fields(PostprocessParams)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(
                f"{option} {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}"
            )
        try:
            out[key] = types[key](value)
        except ValueError:
            raise ValueError(
                f"{option} {item!r}: {key} takes a value of type {types[key].__name__}"
            ) from None
    return out


def run(args: argparse.Namespace) -> int:
    """Write the checkpoint with the new settings and its card.

    Bad settings (unknown key, wrong type, out of range) and a missing checkpoint raise before
    anything is written.
    """
    from hcsflow.segmentation.commands import command_line, save_with_card
    from hcsflow.segmentation.model import count_parameters, load_checkpoint
    from hcsflow.segmentation.postprocess import PostprocessParams

    out = Path(args.out)
    model, source = load_checkpoint(args.checkpoint)
    post = {**source.get("postprocess", {}), **parse_settings(args.set)}
    try:
        PostprocessParams(**post)
    except ValueError as exc:
        raise ValueError(f"--set: {exc}") from None
    meta = {k: v for k, v in source.items() if k != "card"}
    meta["postprocess"] = post
    card = dict(source.get("card", {}))
    source_name = card.get("name", str(args.checkpoint))
    history = list(card.get("benchmark_history", []))
    if card.get("benchmark"):
        old = dict(card.pop("benchmark"))
        old["setting"] = f"{source_name}, post-processing {source.get('postprocess', {})}"
        history.insert(0, old)
    card["benchmark_history"] = history
    card["name"] = args.name or out.stem
    card["parameters"] = count_parameters(model)
    for key, empty in (("licence", None), ("data", {}), ("training", {})):
        card.setdefault(key, empty)
    command = command_line(args, "set-postprocess", positional="checkpoint")
    card["command"] = (
        f"{card.get('command', '')}\n# then the post-processing settings:\n{command}".strip()
    )
    card["notes"] = [
        f"Weights of {source_name}, unchanged; post-processing settings {post}.",
        *args.note,
        *(f"{source_name}: {n}" for n in card.get("notes", [])),
    ]
    meta["card"] = card
    card_path = save_with_card(out, model, meta)
    print(f"[set-postprocess] wrote {out} and {card_path}", flush=True)
    return 0
