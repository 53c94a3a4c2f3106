import contextlib
import json
import os
import subprocess
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


# The files that run workflows (from about a minute to four on 2 cores), longest first. `make test` runs
# pytest-xdist with `--dist loadfile --no-loadscope-reorder`, which hands out whole files in collection order (each
# worker holding two): starting the long ones first keeps both workers busy to the end with the short files, instead
# of leaving one long file to run alone at the end (test_rerun_contract.py, collected late, once made the last two
# minutes one worker's). The SLURM sweep goes first: it mostly waits for the scheduler, so the other worker's
# CPU-bound files fill that time.
SLOW_FIRST = ("test_slurm.py", "test_rerun_contract.py", "test_dvc.py", "test_data_safety.py", "test_faults.py",
              "test_workflow.py", "test_gpu_check.py", "test_cpu_identity.py", "test_snakemake_contract.py",
              "test_train.py", "test_readme.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a file, and among the other files, stays as collected


def copy_working_tree(dst: Path) -> None:
    """The checkout's files as they are now (tracked and new, not ignored), without results or data."""
    import shutil

    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        top = rel.split("/", 1)[0]
        if top in ("data", "results", "logs", ".snakemake") or rel == "dvc.lock":
            continue
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def tiny_project_config() -> dict:
    """The override conftest.tiny_project runs with: tests/test_workflow.py's TINY with two corrections, T = 1, focal,
    one seed, its data inside the working directory."""
    from test_workflow import TINY

    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = "data/synthetic"  # inside the working directory: relative, so copies are portable
    cfg["sweep"] = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    return cfg


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A finished tiny project (tests/test_workflow.py's TINY with two corrections, T = 1, focal, one seed): its
    working directory, with the override it ran with as tiny.yaml. Made once per test session, whichever
    pytest-xdist worker asks first (the others wait for it): tests copy it before changing anything."""
    import fcntl
    import shutil

    import yaml

    # the folder all workers of this session share (pytest-of-USER/pytest-N; popen-gwK below it is a worker's)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    work, done = shared / "tiny" / "work", shared / "tiny" / "done"
    with open(shared / "tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.is_file():
            shutil.rmtree(work.parent, ignore_errors=True)  # what a failed attempt left
            work.mkdir(parents=True)
            (work / "tiny.yaml").write_text(yaml.safe_dump(tiny_project_config()))
            subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", str(REPO / "Snakefile"),
                            "--directory", str(work), "--configfile", str(REPO / "params.yaml"),
                            str(work / "tiny.yaml")],
                           check=True, capture_output=True, env={**venv_env(), "PYTHONPATH": str(REPO / "src")},
                           timeout=900)
            done.touch()
    return work


@contextlib.contextmanager
def headless_chromium():
    """Debian's Chromium through playwright (skips, saying why, where either is missing); closed on the way out."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (`make test` as root installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.lock)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()
