"""Logging for the workflow's scripts: one log file per job, errors written to it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None) -> Iterator[logging.Logger]:
    """Send logging (and warnings) to ``path`` for the duration of the block.

    An exception raised in the block is written to the log with its message before it
    propagates, so that the job's log says why it failed.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    logger = logging.getLogger("hcsflow")
    try:
        yield logger
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        logging.captureWarnings(False)
