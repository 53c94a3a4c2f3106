"""DVC around the Snakemake DAG, for real, in a temporary copy of the repository with a tiny config:
`dvc repro` then nothing to do, metrics and plots, push to a local remote and pull into a fresh
clone that neither DVC nor Snakemake wants to rebuild, and `dvc exp run -S` on a grid axis."""

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, venv_env
from test_workflow import TINY, job_counts

pytestmark = pytest.mark.workflow

# params.yaml owns the sweep in the temporary copy, so `dvc exp run -S sweep...` really changes the run;
# the tiny override (config/tiny.yaml) sets everything else.
TINY_SWEEP = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
STAGES = ("synthesize", "data", "train", "report")
# Snakemake outputs that live in git, not in the DVC cache (the `cache: false` metrics).
GIT_TRACKED_RESULTS = {"results/metrics.json"}


def run(cwd: Path, *cmd: str, check: bool = True, timeout: int = 900) -> str:
    env = venv_env()
    env["PYTHONPATH"] = str(cwd / "src")  # the copy's library, not the editable install of the checkout
    env["DVC_NO_ANALYTICS"] = "1"
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"] = "test"
        env[f"GIT_{who}_EMAIL"] = "test@example.org"
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-8000:]}")
    return out


def copy_working_tree(dst: Path) -> None:
    """The checkout's files as they are now (tracked and new, not ignored), without results or data."""
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


def configfiles(repo: Path) -> list[str]:
    """What `dvc repro` passes to `snakemake --configfile` (params.yaml: pipeline.configfiles)."""
    return yaml.safe_load((repo / "params.yaml").read_text())["pipeline"]["configfiles"].split()


def git_commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


def dvc_status(repo: Path) -> dict:
    return json.loads(run(repo, "dvc", "status", "--json"))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repository copied from the working tree, the tiny config wired in, `dvc repro` run once."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    copy_working_tree(repo)
    tiny = json.loads(json.dumps(TINY))
    tiny.pop("sweep")
    tiny["data"]["root"] = "data/synthetic"  # the synthesize stage's DVC output
    (repo / "config" / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sweep"] = TINY_SWEEP
    params["pipeline"]["configfiles"] = "params.yaml config/tiny.yaml"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q", "-b", "main")
    git_commit(repo, "code")

    first = run(repo, "dvc", "repro")
    # Every Snakemake output is either in the DVC cache (and git-ignored by DVC) or a git-tracked
    # metric/plot: nothing is left for `git add` to pick up by accident.
    untracked = run(repo, "git", "status", "--porcelain", "--untracked-files=all").splitlines()
    leftovers = sorted(
        line[3:] for line in untracked
        if line[3:] != "dvc.lock" and not line.endswith(".gitignore") and line[3:] not in GIT_TRACKED_RESULTS
    )
    git_commit(repo, "dvc repro")
    return {"repo": repo, "first": first, "leftovers": leftovers}


def test_repro_runs_every_stage_then_has_nothing_to_do(project):
    repo = project["repo"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in project["first"], stage
    for name in ("tables/table2.csv", "tables/table3.csv", "figures/fig3.png", "figures/fig3.csv",
                 "figures/fig2.png", "metrics.json", "coefficients/coefficients.png"):
        assert (repo / "results" / name).stat().st_size > 0, name
    assert json.loads((repo / "results" / "metrics.json").read_text())["n_runs"] == len(TINY_SWEEP["correction"])
    assert project["leftovers"] == [], "Snakemake outputs neither DVC outs nor git-tracked metrics/plots"

    again = run(repo, "dvc", "repro")
    assert "Running stage" not in again
    assert "Data and pipelines are up to date." in again or all(
        f"Stage '{s}' didn't change" in again for s in STAGES)
    assert dvc_status(repo) == {}
    assert "Data and pipelines are up to date." in run(repo, "dvc", "status")


def test_grid_change_alone_makes_the_report_stage_stale(project):
    # Shrinking the grid adds no run (results/runs stays as it is, persist), yet the tables must be
    # rebuilt from fewer runs: the report stage has to track `sweep` itself.
    repo = project["repo"]
    params = repo / "params.yaml"
    original = params.read_bytes()
    try:
        cfg = yaml.safe_load(original)
        cfg["sweep"]["correction"] = ["ref_abc"]
        params.write_text(yaml.safe_dump(cfg, sort_keys=False))
        stale = dvc_status(repo)
        assert "report" in stale and "train" in stale
        assert "synthesize" not in stale
    finally:
        params.write_bytes(original)
    assert dvc_status(repo) == {}


def test_metrics_and_plots_read_the_report_outputs(project):
    repo = project["repo"]
    summary = json.loads((repo / "results" / "metrics.json").read_text())
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json"))
    found = [rev["data"]["results/metrics.json"]["data"] for rev in shown.values()
             if "results/metrics.json" in rev.get("data", {})]
    assert found == [summary]
    table = run(repo, "dvc", "metrics", "show")
    assert "results/metrics.json" in table
    assert str(summary["n_runs"]) in table
    values = [v for v in flatten(summary).values() if isinstance(v, float)]
    assert values and all(str(round(v, 5)) in table for v in values)  # dvc rounds to 5 digits

    fig3 = pd.read_csv(repo / "results" / "figures" / "fig3.csv")
    plots = json.loads(run(repo, "dvc", "plots", "show", "--json"))
    [plot] = plots["data"]["results/figures/fig3.csv"]
    content = plot["content"]  # the project's template (.dvc/plots/fig3.json): a panel per metric, a line per correction
    assert content["facet"]["column"]["field"] == "metric"
    spec = content["spec"]
    assert spec["encoding"]["x"]["field"] == "temperature" and spec["encoding"]["color"]["field"] == "correction"
    lines = [layer for layer in spec["layer"] if layer["mark"]["type"] == "line"]
    assert [layer["encoding"]["y"]["field"] for layer in lines] == ["mean"]
    rows = content["data"]["values"]
    assert len(rows) == len(fig3)
    assert sorted(float(r["mean"]) for r in rows) == sorted(fig3["mean"].astype(float))
    html = repo.parent / "plots"
    run(repo, "dvc", "plots", "show", "-o", str(html))
    assert "fig3.csv" in (html / "index.html").read_text()


def test_push_then_pull_into_fresh_clone_is_up_to_date_for_dvc_and_snakemake(project, tmp_path):
    repo = project["repo"]
    remote = tmp_path / "remote"
    remote.mkdir()
    run(repo, "dvc", "remote", "add", "-d", "local", str(remote))
    run(repo, "dvc", "push", "--all-commits")  # the committed baseline, whatever the workspace holds now
    run(repo, "git", "add", ".dvc/config")
    run(repo, "git", "commit", "-q", "-m", "local remote")

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "synthetic").exists() and not (clone / "results" / "runs").exists()
    run(clone, "dvc", "pull")
    assert dvc_status(clone) == {}
    baseline = run(repo, "git", "show", "HEAD:results/metrics.json")
    assert json.loads((clone / "results" / "metrics.json").read_text()) == json.loads(baseline)
    for rel in ("data/synthetic/meta.csv", "results/tables/table2.csv", "results/prepared/manifest.csv",
                "results/runs/ref_abc/T1/focal/seed0/model.pt", "results/features/none/train.npy"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel

    # DVC restored every file with a fresh mtime in no particular order, and the git-tracked summary is
    # older than the runs it summarises. DVC has just matched every file to dvc.lock, so the documented
    # follow-up (`make pull`) marks the whole DAG up to date in DAG order, recording Snakemake metadata.
    cfg = configfiles(clone)
    run(clone, "snakemake", "--touch", "--forceall", "--cores", "1", "--quiet", "--configfile", *cfg)

    assert dvc_status(clone) == {}
    assert "Data and pipelines are up to date." in run(clone, "dvc", "status")
    plan = run(clone, "snakemake", "-n", "--configfile", *cfg)
    assert "Nothing to be done" in plan
    assert "missing provenance/metadata" not in plan
    assert run(clone, "git", "status", "--porcelain") == ""
    nothing = run(clone, "dvc", "repro")
    assert "Running stage" not in nothing

    # The clone is a working project, not only a quiet one: a training parameter in a config file
    # named by pipeline.configfiles makes DVC and Snakemake (params trigger) plan exactly the retraining.
    tiny = clone / "config" / "tiny.yaml"
    cfg_tiny = yaml.safe_load(tiny.read_text())
    cfg_tiny["train"]["epochs"] = 2
    tiny.write_text(yaml.safe_dump(cfg_tiny, sort_keys=False))
    assert "train" in dvc_status(clone)
    counts = job_counts(run(clone, "snakemake", "-n", "--quiet", "rules", "--configfile", *cfg))
    assert counts["train"] == len(TINY_SWEEP["correction"])
    for upstream in ("synthesize", "prepare", "mean_spectra", "coefficients", "feature_stats", "features"):
        assert upstream not in counts, upstream


def test_exp_run_with_a_changed_axis_trains_only_the_new_runs(project):
    repo = project["repo"]
    old_model = repo / "results" / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "model.pt"
    old_mtime = old_model.stat().st_mtime_ns
    out = run(repo, "dvc", "exp", "run", "-n", "hotter", "-S", "sweep.temperature=[1,5]")
    assert "Stage 'synthesize' didn't change" in out and "Stage 'data' didn't change" in out
    assert "Running stage 'train'" in out and "Running stage 'report'" in out
    for c in TINY_SWEEP["correction"]:
        assert (repo / "results" / "runs" / c / "T5" / "focal" / "seed0" / "metrics.json").is_file(), c
    assert old_model.stat().st_mtime_ns == old_mtime  # persist: Snakemake kept the T1 run
    fig3 = pd.read_csv(repo / "results" / "figures" / "fig3.csv")
    assert sorted(fig3["temperature"].unique()) == [1.0, 5.0]

    table = run(repo, "dvc", "exp", "show", "--no-pager", "--csv")
    assert "hotter" in table
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json"))
    by_name = {}
    for entry in shown:
        by_name[entry["name"] or entry["rev"]] = entry
        for group in entry.get("experiments") or []:
            for rev in group["revs"]:
                by_name[rev["name"]] = rev
    baseline, exp = by_name["main"], by_name["hotter"]
    n_runs = len(TINY_SWEEP["correction"])

    def metrics(e):
        return e["data"]["metrics"]["results/metrics.json"]["data"]

    def sweep(e):
        return e["data"]["params"]["params.yaml"]["data"]["sweep"]

    assert metrics(baseline)["n_runs"] == n_runs and sweep(baseline)["temperature"] == [1]
    assert metrics(exp)["n_runs"] == 2 * n_runs and sweep(exp)["temperature"] == [1, 5]
    assert metrics(exp) == json.loads((repo / "results" / "metrics.json").read_text())
