import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def venv_env() -> dict:
    """Environment for subprocesses: the interpreter's bin folder first on PATH (snakemake, dvc)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# The files that run whole workflows (minutes each on 2 cores). `make test` runs pytest-xdist with
# `--dist loadfile --no-loadscope-reorder`, which hands out files in collection order: starting the long ones first
# keeps both workers busy to the end instead of leaving one long file to run alone. The SLURM sweep goes first: it
# is the longest and mostly waits for the scheduler, so the other worker's CPU-bound files fill that time.
SLOW_FIRST = ("test_slurm.py", "test_workflow.py", "test_dvc.py", "test_data_safety.py", "test_cpu_identity.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a file, and among the other files, stays as collected
