import contextlib
import functools
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


# The files that run workflows (from about a minute to four on 2 cores), the long ones first. `make test` runs
# pytest-xdist with `--dist loadfile --no-loadscope-reorder`, which hands out whole files in collection order (each
# worker holding two): starting the long ones first keeps both workers busy to the end with the short files, instead
# of leaving one long file to run alone at the end (test_rerun_contract.py, collected late, once made the last two
# minutes one worker's). The SLURM sweep goes first: it mostly waits for the scheduler, and makes the session's
# tiny project meanwhile (conftest.tiny_project), so the file beside it starts with a test that does not need it.
SLOW_FIRST = ("test_slurm.py", "test_dvc.py", "test_rerun_contract.py", "test_data_safety.py", "test_faults.py",
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
            def snakemake(*targets: str) -> list[str]:
                return [sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--snakefile",
                        str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(REPO / "params.yaml"),
                        str(work / "tiny.yaml")]

            def run(cmd: list[str]) -> None:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(f"the tiny project failed: {' '.join(cmd)}\n{proc.stderr[-6000:]}")

            env = {**venv_env(), "PYTHONPATH": str(REPO / "src")}
            # The demo's route: the generator writes the data, then every later job reads it without writing it.
            # The rest of the DAG runs with the data read-only (tests/test_data_safety.py checks the record).
            run(snakemake("synthetic_data"))
            root = work / "data" / "synthetic"
            before = snapshot(root)
            how = read_only_how()
            try:
                run(read_only(root, snakemake()) if how else snakemake())
            finally:
                if how == "chmod":
                    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
            (work.parent / "data-safety.json").write_text(json.dumps({"read_only": how, "before": before}))
            done.touch()
    return work


def snapshot(root: Path) -> dict:
    """Every file and folder under root: content hash, size, mtime and inode (any rewrite changes one)."""
    import hashlib

    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = path.relative_to(root).as_posix()
        if path.is_file():
            out[key] = [hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_ino]
        else:
            out[key] = ["dir", st.st_mode]
    return out


@functools.cache
def read_only_how() -> str | None:
    """How read_only() makes a tree read-only here: "bind mount" (root, which ignores permission bits, in a private
    mount namespace), "chmod" (anyone else), or None (root where `unshare --mount` is missing or not allowed)."""
    import shutil

    if os.geteuid() != 0:
        return "chmod"
    if shutil.which("unshare") is None:
        return None
    # a container without CAP_SYS_ADMIN has the program but may not make a mount namespace
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return "bind mount" if probe.returncode == 0 else None


def read_only(root: Path, cmd: list[str]) -> list[str]:
    """cmd, to run with `root` read-only (read_only_how). With chmod, the caller gives write permission back
    afterwards (`chmod -R u+w`)."""
    how = read_only_how()
    if how is None:
        pytest.skip("`unshare --mount` is needed (and allowed) to make a read-only tree for root")
    if how == "bind mount":
        script = f'mount --bind "{root}" "{root}" && mount -o remount,ro,bind "{root}" "{root}" && exec "$0" "$@"'
        return ["unshare", "--mount", "sh", "-c", script, *cmd]
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    return cmd


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
