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
    "simulate": ("hcsflow.simulate.commands", "simulate a Cell Painting plate with ground truth"),
    "train-segmenter": (
        "hcsflow.segmentation.commands",
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


DESCRIPTION = """\
Helper commands of hcsflow (simulate a plate, train and prepare models).

The workflow itself (discovery, illumination, segmentation, measurement, profiles, analysis,
report) runs with snakemake from the repository folder, not with this command:

  snakemake --profile profiles/local           # a workstation
  snakemake --profile profiles/slurm           # a SLURM cluster
  snakemake --profile profiles/local -n        # show what would run

Plates and options are set in config/config.yaml (see README.md)."""


def _parser() -> argparse.ArgumentParser:
    from hcsflow import __version__

    parser = argparse.ArgumentParser(
        prog="hcsflow",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hcsflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``hcsflow`` command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = _parser()
        if not argv:
            parser.print_help()
            return 0
        try:
            parser.parse_args(argv)  # -h, --version or an error
        except SystemExit as exc:  # argparse exits 0 after help/version, 2 on an error
            return int(exc.code or 0)
        return 2
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
