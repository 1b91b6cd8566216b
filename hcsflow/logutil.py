"""Logging for the workflow's scripts: one log file per job, errors written to it, progress."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

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


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Log ``k of N`` items done at every ``fraction`` of ``N`` and at the end.

    Parameters
    ----------
    logger : logging.Logger
        Where the lines go (level INFO).
    total : int
        Number of items (``N``).
    action : str
        What is done to each item, e.g. ``"segmented"``, ``"measured"``.
    what : str
        The items, e.g. ``"fields"``.
    fraction : float
        Interval between lines as a fraction of ``total`` (0.1: about every 10 %); with fewer
        than ``1 / fraction`` items every item is logged.
    clock : callable
        Seconds as a float (``time.monotonic``); a parameter for tests.

    Examples
    --------
    >>> progress = Progress(logging.getLogger("hcsflow"), 216, "segmented")
    >>> for field in fields:  # doctest: +SKIP
    ...     segment(field)
    ...     progress.advance()   # "segmented 22 of 216 fields (10 %) in 41 s, about 6 min left"
    """

    def __init__(
        self,
        logger: logging.Logger,
        total: int,
        action: str,
        what: str = "fields",
        fraction: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.logger = logger
        self.total = int(total)
        self.action = action
        self.what = what
        self.fraction = fraction
        self.clock = clock
        self.done = 0
        self._start = clock()
        self._last_step = 0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done; log when a new ``fraction`` of the total is reached."""
        self.done += n
        if self.total <= 0:
            return
        step = int(self.done / self.total / self.fraction + 1e-9)
        if step <= self._last_step and self.done < self.total:
            return
        self._last_step = step
        elapsed = self.clock() - self._start
        line = (
            f"{self.action} {self.done} of {self.total} {self.what} "
            f"({100 * self.done / self.total:.0f} %) in {_duration(elapsed)}"
        )
        if self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
            line += f", about {_duration(left)} left"
        self.logger.info("%s", line)
