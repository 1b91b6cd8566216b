"""Files shipped inside the package (model checkpoints and their cards)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["models_dir"]


def models_dir() -> Path:
    """The folder of the checkpoints shipped with hcsflow, ``hcsflow/models``.

    It is package data, so it is found the same way from a source checkout and after a plain
    ``pip install`` of the package.
    """
    return Path(__file__).resolve().parent / "models"
