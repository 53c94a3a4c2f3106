"""The rerun contract, end to end on a tiny real project: Snakemake's own flags mean what they mean, a plan never
changes what a job records, and no command calls a result current whose inputs' content differs from what it was
made from (heatedasc.currency, heatedasc.job, heatedasc.lineage).

One finished tiny project is made once; every test works on its own copy (a copy is also "the same project at
another path", so every test starts by showing that the copy has nothing to do). Each scenario is checked through
`snakemake -n` (what it plans, by rule) and, where a result is stale, `heatedasc lineage` (exit status 3).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, venv_env
from test_workflow import TINY, job_counts

pytestmark = pytest.mark.workflow

REPORT_RULES = ("tables", "fig3", "fig2", "calibration", "confusion", "significance", "report_html", "all")
SWEEP = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}


def env() -> dict:
    return {**venv_env(), "PYTHONPATH": str(REPO / "src")}


def snakemake(work: Path, *args: str, configs=(), check=True, extra_env=None, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(work), "--configfile", str(REPO / "params.yaml"), str(work / "tiny.yaml"), *map(str, configs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env(), **(extra_env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def plan(work: Path, *args: str, configs=()) -> dict:
    """{rule: count} that `snakemake -n` would run ({} when nothing)."""
    out = snakemake(work, "-n", "--quiet", "rules", *args, configs=configs)
    text = out.stdout + out.stderr
    return {} if "Nothing to be done" in text else {k: v for k, v in job_counts(text).items() if k != "total"}


def lineage(work: Path, target: str, *configs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "heatedasc.cli", "lineage", target, "--configfile", str(work / "tiny.yaml"),
           *map(str, configs)]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env())


def override(work: Path, name: str, cfg: dict) -> Path:
    path = work / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def records(work: Path) -> dict[str, bytes]:
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in sorted((work / "results").rglob("*provenance.json"))}


def scramble_dates(root: Path, seed: int, hours_ago: float = 0.0) -> None:
    """Every file and folder a fresh date in a random order, as `dvc pull` / `dvc checkout` / `git checkout` leave them."""
    import random

    rng = random.Random(seed)
    now = time.time() - hours_ago * 3600
    for p in sorted(root.rglob("*")):
        t = now - rng.random() * 3600
        os.utime(p, (t, t), follow_symlinks=False)


@pytest.fixture
def project(tiny_project, tmp_path):
    """A copy of the finished tiny project (conftest.py; its sweep is SWEEP) at another path (dates copied too)."""
    assert yaml.safe_load((tiny_project / "tiny.yaml").read_text())["sweep"] == SWEEP
    work = tmp_path / "copy"
    shutil.copytree(tiny_project, work, symlinks=True)
    return work


def downstream_of_features(n_feature_jobs: int) -> dict:
    return {"features": n_feature_jobs, "train": len(SWEEP["correction"]), **{r: 1 for r in REPORT_RULES}}


# what follows a change to the uncorrected runs only: the report, but Fig. 2 (it shows Ref.ABC's embeddings)
AFTER_NONE = {"train": 1, **{r: 1 for r in REPORT_RULES if r != "fig2"}}


def test_a_copy_at_another_path_with_dates_in_any_order_has_nothing_to_do(project):
    before = records(project)
    scramble_dates(project / "results", seed=1)
    scramble_dates(project / "data", seed=2)
    scramble_dates(project / "logs", seed=3, hours_ago=24)  # Snakemake compares benchmark files as outputs too
    assert plan(project) == {}
    assert plan(project, "--profile", str(REPO / "slurm")) == {}  # the cluster command plans nothing either
    assert records(project) == before  # planning re-dates outputs; it never rewrites what a job recorded
    assert lineage(project, "results/tables/table3.csv").returncode == 0


def test_forcerun_of_a_rule_or_a_file_and_forceall_rerun_everything_downstream(project):
    n_features = 2 * len(SWEEP["correction"])
    assert plan(project, "-R", "features") == downstream_of_features(n_features)
    assert plan(project, "--forcerun", "results/features/none/train.npy") == {"features": 1, **AFTER_NONE}
    everything = plan(project, "--forceall")
    assert everything["synthesize"] == 1 and everything["prepare"] == 1 and everything["train"] == 2
    # --until and --omit-from cut the forced rerun where the user says
    assert plan(project, "-R", "features", "--until", "features") == {"features": n_features}
    assert plan(project, "-R", "features", "--omit-from", "train") == {"features": n_features}


def test_a_forced_rerun_then_leaves_nothing_to_do(project):
    snakemake(project, "--cores", "2", "-R", "coefficient_plot")
    assert plan(project) == {}


def test_a_hand_edited_intermediate_reruns_its_job_and_everything_down_to_the_tables(project):
    cache = project / "results" / "features" / "none" / "evaluate.npy"
    stat = cache.stat()
    data = bytearray(cache.read_bytes())
    data[-1] ^= 0x01  # same size; the date put back by hand: only the content (and the kernel's ctime) tells
    cache.write_bytes(bytes(data))
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan(project) == {"features": 1, **AFTER_NONE}
    out = lineage(project, "results/tables/table2.csv")
    assert out.returncode == 3 and "✗ changed output cache: results/features/none/evaluate.npy" in out.stdout
    snakemake(project, "--cores", "2")
    assert plan(project) == {}
    assert lineage(project, "results/tables/table2.csv").returncode == 0


def test_a_rerun_that_changed_bytes_is_followed_downstream_even_after_an_interruption(project):
    """The features of one correction rebuilt with another log offset, then the run stops there (as a kill between
    two jobs would leave it): the training runs that read the old caches, and the report, are out of date by
    content, whatever the dates say."""
    offset = override(project, "offset.yaml", {"features": {"log_offset": 1.0e-6}})
    snakemake(project, "--cores", "2", "--until", "features", configs=[offset])
    scramble_dates(project / "results", seed=3)
    assert plan(project, configs=[offset]) == {"train": 2, **{r: 1 for r in REPORT_RULES}}
    out = lineage(project, "results/runs/none/T1/focal/seed0/metrics.json", offset)
    assert out.returncode == 3 and "✗ changed input evaluate: results/features/none/evaluate.npy" in out.stdout


def test_speed_only_settings_rerun_nothing(project):
    speed = override(project, "speed.yaml", {"execution": {
        "features": {"batch_size": 3, "device": "cpu"},
        "train": {"device": "cpu", "channels_last": False, "compile": False, "compile_mode": "reduce-overhead",
                  "eval_batch_size": 7}}})
    assert plan(project, configs=[speed]) == {}
    assert plan(project, "--config", "execution={'features': {'batch_size': 5, 'device': 'cpu'}, 'train': "
                "{'device': 'cpu', 'channels_last': True, 'compile': True, 'compile_mode': 'default', "
                "'eval_batch_size': 64}}") == {}


def test_a_param_reruns_the_jobs_that_read_it_and_names_it_as_the_reason(project):
    epochs = override(project, "e2.yaml", {"train": {"epochs": 2}})
    assert plan(project, configs=[epochs]) == {"train": 2, **{r: 1 for r in REPORT_RULES}}
    out = snakemake(project, "-n", configs=[epochs]).stdout
    assert "params.train.epochs: 1 -> 2" in out  # the reason Snakemake prints names the change in words


def test_no_plan_from_any_config_changes_what_a_job_records(project):
    """Plans with other configurations, several at once and a lineage audit among them, then the training job run
    exactly as a cluster runs it (its own snakemake process, --mode remote): it records what it ran."""
    before = records(project)
    others = [override(project, f"e{n}.yaml", {"train": {"epochs": n}}) for n in (5, 7, 9)]
    plans = [subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(project),
         "--configfile", str(REPO / "params.yaml"), str(project / "tiny.yaml"), str(o)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env()) for o in others]
    assert lineage(project, "results/tables/table3.csv", others[0]).returncode == 3
    assert [p.wait(timeout=600) for p in plans] == [0, 0, 0]
    assert records(project) == before

    three = override(project, "e3.yaml", {"train": {"epochs": 3}})
    job = "train:correction=none,temperature=1,loss=focal,seed=0"
    snakemake(project, "--mode", "remote", "--target-jobs", job, "--allowed-rules", "train", "--force", "--cores",
              "1", "--nolock", "--no-hooks", configs=[three])
    record = json.loads((project / "results/runs/none/T1/focal/seed0/provenance.json").read_text())
    assert record["params"]["train"]["epochs"] == 3
    assert len((project / "results/runs/none/T1/focal/seed0/history.csv").read_text().splitlines()) == 1 + 3
    assert plan(project, configs=[three]) == {"train": 1, **{r: 1 for r in REPORT_RULES}}  # ref_abc's run and the report


def test_touch_marks_out_of_date_results_current_and_says_so(project):
    epochs = override(project, "e2.yaml", {"train": {"epochs": 2}})
    snakemake(project, "--touch", "--cores", "1", configs=[epochs])
    assert plan(project, configs=[epochs]) == {}
    record = json.loads((project / "results/runs/none/T1/focal/seed0/provenance.json").read_text())
    assert record["params"]["train"]["epochs"] == 2 and "not recomputed" in record["touched"]
    out = lineage(project, "results/runs/none/T1/focal/seed0/metrics.json", epochs)
    assert out.returncode == 0 and "! outputs marked current by snakemake --touch, not recomputed" in out.stdout


def test_heatedasc_report_leaves_the_tracked_results_as_they_were(project):
    results = tree_hashes(project / "results")
    proc = subprocess.run([sys.executable, "-m", "heatedasc.cli", "report", "--configfile", str(project / "tiny.yaml")],
                          cwd=project, capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    assert (project / "partial-report" / "tables" / "table2.csv").is_file()
    assert tree_hashes(project / "results") == results
    assert plan(project) == {}


def test_a_data_root_that_is_not_there_stops_planning_naming_it(project):
    missing = override(project, "gone.yaml", {"data": {"root": "/path/to/TAU"}, "synth": {"enabled": False}})
    proc = snakemake(project, "-n", configs=[missing], check=False)
    assert proc.returncode != 0
    assert "data.root '/path/to/TAU' does not exist" in proc.stdout + proc.stderr


def test_a_dataset_mounted_elsewhere_and_a_moved_clone_rerun_nothing(tmp_path):
    """Records name raw data relative to data.root and everything else relative to the working directory."""
    data1 = tmp_path / "mnt1" / "tau"
    gen = tmp_path / "gen"
    gen.mkdir()
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(data1)
    (gen / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(gen, "--cores", "1", "synthetic_data")
    work = tmp_path / "work"
    work.mkdir()
    cfg["synth"] = {"enabled": False}
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(work, "--cores", "2", "results/prepared/manifest.csv", "results/coefficients/ref_abc.npz")
    record = json.loads((work / "results/prepared/provenance.json").read_text())
    assert "{data.root}/meta.csv" in record["inputs"]["meta"]
    assert not any(str(tmp_path) in p for group in record["inputs"].values() for p in group)

    data2 = tmp_path / "mnt2" / "tau"
    data2.parent.mkdir()
    shutil.move(data1, data2)
    moved = tmp_path / "elsewhere" / "work"
    shutil.copytree(work, moved, symlinks=True)
    cfg["data"]["root"] = str(data2)
    (moved / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(moved, "results/prepared/manifest.csv", "results/coefficients/ref_abc.npz", "-n", "--quiet", "rules")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_a_rule_that_records_nothing_stops_every_command_naming_it(tmp_path):
    copy = tmp_path / "wf"
    for part in ("workflow", "profiles", "params.yaml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / part)
    snakefile = (REPO / "Snakefile").read_text().replace(
        "CURRENCY = Currency(workflow, config)",
        'rule forgetful:\n    output:\n        "results/x.txt",\n    shell:\n        "touch {output}"\n\n\n'
        "CURRENCY = Currency(workflow, config)")
    (copy / "Snakefile").write_text(snakefile)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(copy / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(copy / "params.yaml"),
                           str(REPO / "config" / "smoke.yaml")], capture_output=True, text=True, env=env())
    assert proc.returncode != 0
    assert "rule forgetful: every rule that writes files must name its record `provenance=...`" in proc.stdout + proc.stderr


def test_a_run_whose_results_are_not_current_at_its_end_fails_naming_them(project):
    """The end-of-run check (what keeps `dvc repro` from locking an inconsistent state): a raw wav changes while
    the run trains, so the data jobs that read it are out of date when the run ends."""
    for run in (project / "results" / "runs").glob("*/T1/focal/seed0"):
        (run / "metrics.json").unlink()  # both training runs and the report to do
    shutil.rmtree(project / "logs" / "train")  # the first run's logs: a new one means training has begun
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(project), "--configfile", str(REPO / "params.yaml"), str(project / "tiny.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    train_log = project / "logs" / "train"
    deadline = time.monotonic() + 300
    while not any(train_log.rglob("*.log")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    wav = sorted((project / "data" / "synthetic" / "audio").glob("*.wav"))[0]
    data = bytearray(wav.read_bytes())
    data[-1] ^= 0x01
    wav.write_bytes(bytes(data))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, out[-3000:]
    assert "these results are not current after the run:" in out
    assert "synthesize: output data/synthetic/audio changed since the job wrote it" in out
    assert "prepare: input data/synthetic/audio changed" in out
