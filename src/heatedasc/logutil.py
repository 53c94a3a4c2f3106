"""Logging for workflow scripts: one log file per job (Snakemake `log:`), mirrored on stderr.

Under `snakemake --logger heatedasc` (the compact terminal log, which sets HEATEDASC_COMPACT_LOG) a job
writes its records to its log file only and draws no progress bars, so the terminal shows one line per job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
COMPACT_ENV = "HEATEDASC_COMPACT_LOG"


def compact_terminal() -> bool:
    return os.environ.get(COMPACT_ENV, "") not in ("", "0")


def show_progress() -> bool:
    """Whether a job should draw progress bars on the terminal."""
    return not compact_terminal()


@contextlib.contextmanager
def job_logging(log_file: str | None, name: str = "heatedasc") -> Iterator[logging.Logger]:
    """Send the package's log records to `log_file` and stderr; log (then re-raise) any exception."""
    root = logging.getLogger("heatedasc")
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [] if compact_terminal() else [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    logger = logging.getLogger(name)
    try:
        yield logger
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
