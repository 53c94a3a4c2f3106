"""`snakemake --profile slurm` against a real single-node SLURM (tools/local-slurm.sh).

Skips, with the reason, where SLURM is not installed and cannot be started (not root). CI runs as
root and `make test` installs the Debian packages first, so there it runs for real."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_project_config, venv_env

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
TOOL = REPO / "tools" / "local-slurm.sh"


@pytest.fixture(scope="module")
def local_slurm():
    if not all(shutil.which(b) for b in ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged")):
        pytest.skip("SLURM is not installed here (run `tools/local-slurm.sh install` as root to enable this test)")
    if subprocess.run([str(TOOL), "status"]).returncode == 0:
        yield "already running"
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM is installed but not running, and starting its daemons needs root")
    subprocess.run([str(TOOL), "start"], check=True, timeout=180)
    try:
        yield "started"
    finally:
        subprocess.run([str(TOOL), "stop"], timeout=60)


def _config(tmp_path: Path, name: str) -> Path:
    """conftest.tiny_project's configuration (the same DAG, so its results are the local run to compare with), with
    data.root inside `tmp_path` and the execution settings of a GPU cluster."""
    cfg = tiny_project_config()
    cfg["data"]["root"] = str(tmp_path / "data" / "synthetic")
    # The train jobs get a fake GPU (gres File=/dev/fakegpu0), so SLURM sets SLURM_JOB_GPUS and
    # CUDA_VISIBLE_DEVICES in them on a machine without CUDA; `auto` would rightly stop such a job
    # (runtime.resolve_device), so this test names the CPU explicitly.
    cfg["execution"] = {"features": {"batch_size": 16, "device": "cpu"},
                        "train": {"device": "cpu", "channels_last": True, "compile": True, "compile_mode": "default",
                                  "eval_batch_size": 128}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _slurm_jobs(workdir: Path) -> list[dict]:
    """SLURM's own record of the jobs that ran in `workdir` (scontrol; MinJobAge keeps finished ones)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("WorkDir") == str(workdir) or fields.get("StdOut", "").startswith(str(workdir) + "/"):
            jobs.append(fields)
    return jobs


def _profile_cmd(workdir: Path, cfg: Path) -> list[str]:
    return [
        "timeout", "-s", "KILL", "900",
        sys.executable, "-m", "snakemake", "--profile", "slurm",
        "--directory", str(workdir),
        "--configfile", str(REPO / "params.yaml"), str(cfg),
        # only to make the test quick: the first status check 1 s after a submission instead of 40 (the plugin adds
        # 10 s to each wait that finds no job finished, and starts again from this one when one has)
        "--slurm-init-seconds-before-status-checks", "1", "--jobs", "4",
    ]


def test_profile_slurm_runs_the_sweep_survives_a_cancelled_train_job_and_matches_a_local_run(local_slurm, tmp_path,
                                                                                             request):
    """One sweep through the real scheduler (kept to one because each pass costs minutes on 2 cores):
    a train job is cancelled in the queue, the failure is reported and --keep-going finishes the rest,
    the rerun resubmits only what is missing, every train job asked for a GPU, each run saw its SLURM
    allocation, and the numbers equal those of the same DAG run locally (conftest.tiny_project)."""
    workdir = tmp_path / "slurm"
    workdir.mkdir()
    cfg = _config(workdir, "cfg.yaml")
    # The literal `--profile slurm`: Snakemake finds ./slurm/config.yaml from the repository root.
    # The sweep up to Table 2: every upstream rule and every train job go through sbatch; the report's other
    # artefacts are more jobs of the same kind as `tables`, minutes of scheduler round trips on 2 cores.
    target = "results/tables/table2.csv"
    proc = subprocess.Popen(_profile_cmd(workdir, cfg) + [target], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=venv_env())
    found: list[dict] = []
    errors: list[BaseException] = []

    def cancel_a_train_job() -> None:
        try:
            deadline = time.monotonic() + 600
            while not found and proc.poll() is None and time.monotonic() < deadline:
                for job in _slurm_jobs(workdir):
                    if job.get("Comment", "").startswith("rule_train") and job["JobState"] in ("PENDING", "RUNNING"):
                        subprocess.run(["scancel", job["JobId"]], check=True)
                        found.append(job)
                        break
                time.sleep(0.3)
        except BaseException as exc:  # reported by the test, not lost with the thread
            errors.append(exc)

    watcher = threading.Thread(target=cancel_a_train_job, daemon=True)
    watcher.start()
    try:
        # The same DAG run locally (the session's tiny project), to compare the numbers with at the end: made here if
        # no other worker has made it yet, while the scheduler runs the sweep (each level of the DAG waits for a
        # status check, so this worker would otherwise mostly wait).
        tiny_project = request.getfixturevalue("tiny_project")
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    watcher.join(timeout=60)
    assert not errors, f"watching the queue failed: {errors[0]!r}"
    cancelled = found[0] if found else None
    assert cancelled is not None, "no train job was seen in the queue to cancel:\n" + out[-4000:]
    gone = "ref_abc" if "ref_abc" in cancelled["Comment"] else "none"
    kept = "none" if gone == "ref_abc" else "ref_abc"

    # Reported: the run fails, naming the train job; --keep-going (profile) let the other run finish.
    assert proc.returncode != 0, out[-4000:]
    assert "Error in rule train" in out and cancelled["JobId"] in out, out[-6000:]
    assert (workdir / "results/runs" / kept / "T1/focal/seed0/metrics.json").is_file()
    assert not (workdir / "results/runs" / gone / "T1/focal/seed0/metrics.json").exists()
    assert not (workdir / "results/tables/table2.csv").exists()

    # The rerun submits only the missing run and the report jobs that wait for it.
    before = {j["JobId"] for j in _slurm_jobs(workdir)}
    rerun = subprocess.run(_profile_cmd(workdir, cfg) + [target], cwd=REPO, capture_output=True, text=True,
                           env=venv_env())
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-8000:]
    new = [j for j in _slurm_jobs(workdir) if j["JobId"] not in before]
    rules = sorted(j["Comment"].split("_wildcards")[0] for j in new)
    train = [j for j in new if j["Comment"].startswith("rule_train")]
    assert len(train) == 1 and ("ref_abc" in train[0]["Comment"]) == (gone == "ref_abc"), rules
    upstream = {"rule_prepare", "rule_mean_spectra", "rule_coefficients", "rule_features", "rule_feature_stats"}
    assert not upstream & set(rules), rules
    assert "rule_tables" in rules
    assert (workdir / "results/runs" / gone / "T1/focal/seed0/metrics.json").is_file()
    assert (workdir / "results/tables/table2.csv").is_file()

    # SLURM's record of both passes: every job completed but the cancelled one; the three train jobs (two
    # runs, one of them twice) asked for one GPU each, and no other job asked for any.
    jobs = _slurm_jobs(workdir)
    train = [j for j in jobs if j.get("Comment", "").startswith("rule_train")]
    others = [j for j in jobs if not j.get("Comment", "").startswith("rule_train")]
    assert len(train) == 3, [j.get("Comment") for j in jobs]
    assert {j["JobId"]: j["JobState"] for j in jobs if j["JobState"] != "COMPLETED"} == {cancelled["JobId"]: "CANCELLED"}
    assert all("gpu:1" in j.get("TresPerJob", "") for j in train)
    assert not any("gpu" in j.get("TresPerJob", "") for j in others)
    assert {j.get("Comment", "").split("_wildcards")[0] for j in others} >= {
        "rule_prepare", "rule_features", "rule_tables"
    }

    # Inside the job the run saw SLURM's allocation (job id, the one GPU it was given): the volatile half of
    # its provenance record, kept under logs/provenance/ (the tracked half holds nothing job-specific).
    from heatedasc.provenance import load_volatile

    finished = {j["JobId"] for j in train if j["JobState"] == "COMPLETED"}
    for c in ("ref_abc", "none"):
        record = workdir / "results/runs" / c / "T1/focal/seed0/provenance.json"
        assert "slurm" not in json.loads(record.read_text())
        where = load_volatile(record, base=workdir)
        assert where["slurm"]["slurm_job_id"] in finished
        assert where["host"]["cuda_visible_devices"] == "0"

    # The same DAG run locally (the session's tiny project, at another path) gives the same numbers.
    for c in ("ref_abc", "none"):
        a = json.loads((workdir / "results/runs" / c / "T1/focal/seed0/metrics.json").read_text())
        b = json.loads((tiny_project / "results/runs" / c / "T1/focal/seed0/metrics.json").read_text())
        for key in ("acc_a", "acc_b", "acc_c", "avg_bc", "best_epoch"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (c, key)


def test_a_slurm_run_whose_controller_does_not_answer_stops_before_removing_anything(tiny_project, tmp_path):
    """Snakemake removes a job's old outputs just before submitting it: with the controller down, a forced rerun
    would lose them and fail anyway. The run asks the controller first (heatedasc.sessions) and stops, naming it.
    No scheduler is needed here: `scontrol` is a stand-in that reports the controller down."""
    workdir = tmp_path / "work"
    shutil.copytree(tiny_project, workdir, symlinks=True)  # a finished local run
    cfg = workdir / "tiny.yaml"
    target = "results/coefficients/coefficients.png"
    plot = workdir / target
    before = plot.read_bytes()
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("scontrol", "sinfo", "squeue", "sacct", "sacctmgr", "sbatch"):
        (fake / tool).write_text("#!/bin/sh\necho 'slurm_load_ctl_conf error: Unable to contact slurm controller "
                                 "(connect failure)' >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    env = {**venv_env(), "PATH": f"{fake}{os.pathsep}{venv_env()['PATH']}"}
    proc = subprocess.run(_profile_cmd(workdir, cfg)[4:] + [target, "-R", "coefficient_plot"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the SLURM controller does not answer" in out and "Nothing was submitted or removed" in out, out[-4000:]
    assert plot.read_bytes() == before
