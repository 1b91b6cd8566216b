"""Command-line entry point ``hcsflow``.

Each sub-command lives in the module that implements it; that module provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``hcsflow --help`` stays fast. Bad input (a ``ValueError`` or an
``OSError`` such as a missing file, raised with a message that names the file or option) is
reported as ``hcsflow COMMAND: error: ...`` with exit code 2, as argparse reports a bad
option; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("hcsflow.simulate", "simulate a Cell Painting plate with ground truth"),
    "train-segmenter": (
        "hcsflow.segmentation.train",
        "train the nuclear + whole-cell segmentation network",
    ),
    "average-segmenters": (
        "hcsflow.segmentation.average",
        "average the weights of segmentation checkpoints fine-tuned from one start",
    ),
    "set-postprocess": (
        "hcsflow.segmentation.setpost",
        "copy a segmentation checkpoint with new deep-watershed settings",
    ),
    "train-embedder": (
        "hcsflow.features.embed_train",
        "train a per-cell CNN embedder on sampled crops (weakly or self-supervised)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``hcsflow`` command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hcsflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"hcsflow {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"hcsflow {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
