"""Faults a long sweep meets, made for real: a full disk (a small tmpfs, as root), a run killed with `kill -9`, two
runs at once. Each ends in one clear line, nothing half-written where a later run or DVC looks, and the README's
command carrying on."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, venv_env
from test_workflow import TINY


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of a few MB (8, or the test's `disk_mb` mark): a disk that really fills up (needs root; skipped with
    the reason otherwise)."""
    mark = request.node.get_closest_marker("disk_mb")
    size = mark.args[0] if mark else 8
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Take all but `leave` bytes of `disk`."""
    free = shutil.disk_usage(disk).free
    with open(disk / "ballast", "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, free - leave))


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_synth_on_a_full_disk_says_so_in_one_line_naming_the_file(small_disk):
    root = small_disk / "synthetic"
    proc = subprocess.run([sys.executable, "-m", "heatedasc.cli", "synth", "--root", str(root), "--seed", "0",
                           "--clip-seconds", "1", "--train-parallel-per-scene", "6", "--train-a-only-per-scene", "6",
                           "--evaluate-parallel-per-scene", "2", "--evaluate-a-only-per-scene", "2", "--no-progress"],
                          capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("heatedasc synth: error: no space left on the device or quota writing ")
    assert "bytes free there" in lines[0] and "needed)" in lines[0] and ".wav" in lines[0]
    assert not root.exists() and files_under(small_disk) == []  # the staging folder went with the error


def test_a_feature_cache_that_cannot_fit_stops_before_writing_with_plain_io(small_disk, monkeypatch):
    """No memory map over a full disk (that dies of SIGBUS with an empty log): the space is checked first."""
    from heatedasc.feature_cache import ShardedCacheWriter
    from heatedasc.fileio import DiskFullError

    (small_disk / ".snakemake").mkdir()
    monkeypatch.chdir(small_disk)
    out = small_disk / "results" / "features" / "none" / "train.npy"
    writer = ShardedCacheWriter(out, "k" * 32, 40, (32, 100), shard_rows=20)
    rows = np.zeros((20, 32, 100), dtype=np.float16)
    writer.write_shard(0, rows)
    writer.write_shard(20, rows)  # 2 x 128 kB of shards
    fill(small_disk, leave=200_000)  # the whole cache (256 kB) no longer fits
    with pytest.raises(DiskFullError, match=r"no space left on the device or quota writing .*train\.npy "
                                            r"\([\d,]+ bytes free there, 256,128 needed\)"):
        writer.assemble()
    assert not out.parent.exists() or files_under(out.parent) == []


def test_a_checkpoint_on_a_full_disk_names_the_file_not_torchs_internals(small_disk):
    import torch

    from heatedasc.fileio import DiskFullError, save_torch

    with pytest.raises(DiskFullError, match=r"writing .*last\.pt \([\d,]+ bytes free there, [\d,]+ needed\)"):
        save_torch({"w": torch.zeros(4 * 1024 * 1024)}, small_disk / "resume" / "last.pt")  # 16 MB into 8 MB
    assert files_under(small_disk) == []


@pytest.mark.workflow
@pytest.mark.disk_mb(64)
def test_a_job_that_fills_the_disk_fails_with_one_line_in_its_log_and_leaves_nothing_half_written(small_disk):
    """The tiny workflow in a working directory on the small disk: data prepared, then the disk filled, then the
    feature jobs. Each fails with one line naming the file and the bytes; no partial cache in the tracked folder."""
    work = small_disk / "work"
    work.mkdir()
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = "data/synthetic"
    cfg["sweep"] = {"correction": ["none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(REPO / "params.yaml"), str(work / "tiny.yaml"), "--cores", "1"]
    env = {**venv_env(), "PYTHONPATH": str(REPO / "src")}
    first = subprocess.run(cmd + ["results/features/none/stats.npz"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    fill(small_disk, leave=60_000)
    proc = subprocess.run(cmd + ["results/features/none/train.npy", "--keep-going"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode != 0
    log = (work / "logs" / "features" / "none-train.log").read_text().splitlines()
    errors = [line for line in log if " ERROR " in line]
    assert len(errors) == 1, log
    assert "no space left on the device or quota writing" in errors[0] and "needed)" in errors[0]
    assert "Traceback" not in "\n".join(log)
    assert [f for f in files_under(work / "results" / "features") if not f.endswith(("stats.npz",
                                                                                     "stats.provenance.json"))] == []


@pytest.mark.workflow
def test_a_run_killed_with_kill_9_resumes_with_the_same_command_and_gives_the_same_results(tiny_project, tmp_path):
    """`kill -9` of the whole process group mid-training: Snakemake's locks stay behind. Running the same command
    again removes them (every run that held them is gone), resumes training after its last finished epoch, and
    ends with the numbers of an uninterrupted run. A second run started while the first one runs is refused.
    Both projects are copies of the session's finished tiny project: more epochs rerun its training only."""
    cfg = yaml.safe_load((tiny_project / "tiny.yaml").read_text())
    cfg["train"]["epochs"] = 150
    cfg["sweep"] = {"correction": ["none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    run_key = "none/T1/focal/seed0"

    def project(name):
        work = tmp_path / name
        shutil.copytree(tiny_project, work, symlinks=True)
        (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
        # the run's own result as the target: the report jobs after it add nothing to what is tested here
        return work, [sys.executable, "-m", "snakemake", f"results/runs/{run_key}/metrics.json", "--snakefile",
                      str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(REPO / "params.yaml"),
                      str(work / "tiny.yaml"), "--cores", "1"]

    def wait_for(path: Path, text: str, proc) -> None:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if path.is_file() and text in path.read_text():
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared in {path}")

    env = {**venv_env(), "PYTHONPATH": str(REPO / "src")}
    work, cmd = project("killed")
    log = work / "logs" / "train" / "none" / "T1" / "focal" / "seed0.log"
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    wait_for(log, "epoch 3/150", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert any((work / ".snakemake" / "locks").iterdir())  # left behind by the killed run

    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for(log, "resuming", again)
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env)  # a second run while it trains
    assert refused.returncode != 0 and "LockException" in refused.stdout + refused.stderr
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-4000:]
    assert "removed the locks of a snakemake run that is no longer running" in out
    resumed = log.read_text().split("resuming", 1)[1]
    assert "epoch 1/150" not in resumed and "epoch 150/150" in resumed

    ref, ref_cmd = project("uninterrupted")
    subprocess.run(ref_cmd, check=True, capture_output=True, env=env)
    run = Path("results/runs") / run_key
    for name in ("metrics.json", "history.csv", "model.pt", "predictions.npz"):
        assert (work / run / name).read_bytes() == (ref / run / name).read_bytes(), name
    assert not list((work / ".snakemake" / "heatedasc" / "scratch").glob("[0-9]*"))  # the dead writers' leftovers
