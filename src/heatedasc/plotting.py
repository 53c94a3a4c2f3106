"""Matplotlib for every figure: the headless Agg backend, chosen here once, and atomic, reproducible files."""

from __future__ import annotations

import os

from heatedasc.fileio import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on cluster nodes and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# No creation date or producer version in the files: an identical rerun writes identical bytes (DVC's lock
# stays unchanged). PNG carries no date by default; PDF does.
_NO_DATES = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def save_figure(fig, path: str | os.PathLike, *, format: str = "png", dpi=None) -> None:
    """Write `fig` to `path` under a temporary name first, so a failed save leaves nothing behind."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=format, metadata=_NO_DATES.get(format))
