"""DVC around the Snakemake DAG, for real, in a temporary git copy of the repository with a tiny config.

What a DVC user does, and what must then hold in BOTH tools with no extra command:
* `dvc repro`, then nothing to do; from scratch it makes the same dvc.lock as the results Snakemake alone made;
* after `git clone` + `dvc pull`, `dvc checkout`, `git checkout <other>` + `dvc checkout` and `dvc exp apply`,
  `dvc status --json` and `snakemake -n` report nothing to do (and, after the pull and after `exp apply`, DVC's
  human-readable status and the literal cluster command `--profile slurm` too);
* `dvc exp run -S` takes effect (and `dvc exp show` / `dvc params diff` show the values that ran), or stops
  naming the config file that overrides the key.
What a change (a param, a library module, a raw wav, a cached intermediate) makes `dvc status` and `dvc repro` do is
the rerun-contract suite's (tests/test_rerun_contract.py), beside Snakemake's plan and `heatedasc lineage`.
"""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import copy_working_tree, venv_env
from test_workflow import TINY, job_counts

pytestmark = pytest.mark.workflow

# params.yaml owns the sweep in the temporary copy, so `dvc exp run -S sweep...` really changes the run;
# the tiny override (config/tiny.yaml) sets everything else.
TINY_SWEEP = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
STAGES = ("config", "synthesize", "data", "train", "report")
CLEAN = "Data and pipelines are up to date."


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


def configfiles(repo: Path) -> list[str]:
    """What `dvc repro` passes to `snakemake --configfile` (params.yaml: pipeline.configfiles)."""
    return yaml.safe_load((repo / "params.yaml").read_text())["pipeline"]["configfiles"].split()


def git_commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


def dvc_status(repo: Path) -> dict:
    return json.loads(run(repo, "dvc", "status", "--json"))


def plan(repo: Path, *extra: str) -> dict:
    """{rule: count} of what `snakemake -n` would run ({} when nothing)."""
    out = run(repo, "snakemake", "-n", "--quiet", "rules", *extra, "--configfile", *configfiles(repo))
    return {} if "Nothing to be done" in out else job_counts(out)


def assert_nothing_to_do(repo: Path, *, every_form: bool = False) -> None:
    """`dvc status` and `snakemake -n` have nothing to do; with every_form, also in DVC's words for a person and
    through the literal cluster command (`--profile slurm`), which plan the same (checked once per test)."""
    assert dvc_status(repo) == {}
    assert plan(repo) == {}
    if every_form:
        assert CLEAN in run(repo, "dvc", "status")
        assert plan(repo, "--profile", "slurm") == {}


def edit_yaml(path: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def new_project(root: Path, *, tiny_overrides: dict | None = None) -> Path:
    """A git repository copied from the working tree with the tiny config wired in (not yet run)."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    copy_working_tree(repo)
    tiny = json.loads(json.dumps(TINY))
    tiny.pop("sweep")
    tiny["data"]["root"] = "data/synthetic"  # the synthesize stage's DVC output
    for section, values in (tiny_overrides or {}).items():
        tiny.setdefault(section, {}).update(values)
    (repo / "config" / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(repo / "params.yaml") as params:  # DVC's own YAML writer, as `dvc exp run -S` edits it
        params["sweep"] = TINY_SWEEP
        params["pipeline"]["configfiles"] = "params.yaml config/tiny.yaml"
    run(repo, "git", "init", "-q", "-b", "main")
    git_commit(repo, "code")
    return repo


@pytest.fixture(scope="module")
def project(tiny_project, tmp_path_factory):
    """The tiny project (conftest.tiny_project, which Snakemake made) in a git repository of this checkout, its
    results taken into DVC as they are: `dvc repro config` writes the merged configuration, `dvc commit` records
    every stage in dvc.lock; committed. test_an_identical_rerun_from_scratch_makes_the_same_dvc_lock shows that
    this is the state `dvc repro` makes."""
    import shutil

    repo = new_project(tmp_path_factory.mktemp("dvc"))
    for part in ("data", "results", "logs", ".snakemake"):
        shutil.copytree(tiny_project / part, repo / part, symlinks=True)
    run(repo, "dvc", "repro", "config")
    run(repo, "dvc", "commit", "--force")
    git_commit(repo, "dvc commit")
    return {"repo": repo, "lock": (repo / "dvc.lock").read_text()}


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """A new copy of the project that ran `dvc repro` from nothing (no results, no cache to pull from), committed."""
    repo = new_project(tmp_path_factory.mktemp("rerun"))
    first = run(repo, "dvc", "repro")
    # Every output is in the DVC cache (git-ignored by DVC) or a git-tracked cache: false out.
    untracked = run(repo, "git", "status", "--porcelain", "--untracked-files=all").splitlines()
    leftovers = sorted(line[3:] for line in untracked if line[3:] != "dvc.lock" and not line.endswith(".gitignore")
                       and line[3:] not in ("results/config.yaml", "results/metrics.json")
                       and not line[3:].startswith("results/metrics/"))
    git_commit(repo, "dvc repro")
    return {"repo": repo, "first": first, "leftovers": leftovers}


def test_repro_runs_every_stage_then_has_nothing_to_do(rerun):
    repo = rerun["repo"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in rerun["first"], stage
    from heatedasc.report.registry import REGISTRY

    made = {**REGISTRY.paths(repo / "results"), "config": repo / "results" / "config.yaml",
            "ref_abc metrics": repo / "results" / "metrics" / "ref_abc.json"}
    for key, path in made.items():  # every report artefact, its record and the figures it shows
        assert Path(path).stat().st_size > 0, key
    assert json.loads((repo / "results" / "metrics.json").read_text())["n_runs"] == len(TINY_SWEEP["correction"])
    assert rerun["leftovers"] == [], "Snakemake outputs that are neither DVC outs nor git-tracked"
    # One line per job on the terminal, not Snakemake's reason dumps.
    assert "reason:" not in rerun["first"] and "[0/" in rerun["first"]

    again = run(repo, "dvc", "repro")
    assert "Running stage" not in again
    assert_nothing_to_do(repo, every_form=True)
    assert run(repo, "git", "status", "--porcelain") == ""


def test_an_identical_rerun_from_scratch_makes_the_same_dvc_lock(rerun, project):
    """`dvc repro` from nothing records what Snakemake alone made (the project's results, committed as they were):
    the same dvc.lock and the same git-tracked results, byte for byte."""
    repo = rerun["repo"]
    assert (repo / "dvc.lock").read_text() == project["lock"]
    tracked = run(repo, "git", "ls-files", "results").split()
    assert "results/config.yaml" in tracked and "results/metrics.json" in tracked
    for rel in tracked:
        assert (repo / rel).read_bytes() == (project["repo"] / rel).read_bytes(), rel
    # when/where the jobs ran stays beside the logs, where `heatedasc lineage` finds it
    volatile = repo / "logs" / "provenance" / "results" / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "provenance.json"
    assert {"created", "host", "git"} <= set(json.loads(volatile.read_text()))
    out = run(repo, "heatedasc", "lineage", "results/runs/ref_abc/T1/focal/seed0/metrics.json", "--no-plan")
    assert "[ok] train(correction=ref_abc, temperature=1, loss=focal, seed=0) at 20" in out


def test_metrics_show_is_a_table_a_person_can_read(project):
    repo = project["repo"]
    table = run(repo, "dvc", "metrics", "show")
    lines = table.strip().splitlines()
    assert [l.split()[0] for l in lines[1:]] == ["results/metrics/none.json", "results/metrics/ref_abc.json"]
    assert max(len(l) for l in lines) < 200
    header = lines[0].split()
    assert header[0] == "Path" and "avg_bc_focal_T1" in header and "dev_a_focal_T1" in header
    assert all("." not in h for h in header)  # flat keys
    ref_abc = json.loads((repo / "results" / "metrics" / "ref_abc.json").read_text())
    summary = json.loads((repo / "results" / "metrics.json").read_text())
    assert ref_abc["avg_bc_focal_T1"] == round(100 * summary["ref_abc"]["focal"]["avg_bc_T1"], 2)
    assert str(ref_abc["avg_bc_focal_T1"]) in lines[2]

    plots = json.loads(run(repo, "dvc", "plots", "show", "--json"))
    [fig3] = plots["data"]["results/figures/fig3.csv"]
    assert fig3["content"]["facet"]["column"]["field"] == "metric"  # the project's template .dvc/plots/fig3.json


def test_clone_pull_checkout_and_exp_apply_need_no_extra_command(project, tmp_path):
    repo = project["repo"]
    remote = tmp_path / "remote"
    remote.mkdir()
    run(repo, "dvc", "remote", "add", "-d", "local", str(remote))
    run(repo, "git", "add", ".dvc/config")
    run(repo, "git", "commit", "-q", "-m", "local remote")
    run(repo, "dvc", "push")

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "results" / "runs").exists()
    run(clone, "dvc", "pull")  # fresh mtimes, in no particular order; no Snakemake metadata at all
    for rel in ("data/synthetic/meta.csv", "results/prepared/manifest.csv",
                "results/runs/ref_abc/T1/focal/seed0/model.pt", "results/features/none/train.npy"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert_nothing_to_do(clone, every_form=True)

    # Another version of the results, committed: two more epochs.
    edit_yaml(clone / "config" / "tiny.yaml", "train", "epochs", 2)
    out = run(clone, "dvc", "repro")
    assert "Running stage 'train'" in out and "Stage 'data' didn't change" in out
    git_commit(clone, "two epochs")
    run(clone, "dvc", "push")
    assert_nothing_to_do(clone)

    # git checkout <other commit> + dvc checkout, both ways.
    run(clone, "git", "checkout", "-q", "HEAD~1")
    run(clone, "dvc", "checkout")
    assert yaml.safe_load((clone / "results" / "config.yaml").read_text())["train"]["epochs"] == 1
    assert_nothing_to_do(clone)
    run(clone, "git", "checkout", "-q", "main")
    run(clone, "dvc", "checkout")
    assert_nothing_to_do(clone)

    # dvc exp run, back to the baseline, then dvc exp apply. The experiment renames a correction in the report (its
    # jobs only rerun): the checkouts above already switched trained models back and forth.
    run(clone, "dvc", "exp", "run", "-n", "renamed", "-S", "config/tiny.yaml:+report.corrections.none.label=Plain")
    run(clone, "git", "checkout", "--", ".")
    run(clone, "dvc", "checkout", "--force")
    assert "Plain" not in (clone / "results" / "tables" / "table2.md").read_text()
    assert_nothing_to_do(clone)
    run(clone, "dvc", "exp", "apply", "renamed")
    assert yaml.safe_load((clone / "results" / "config.yaml").read_text())["report"]["corrections"]["none"] == {
        "label": "Plain"}
    assert "Plain" in (clone / "results" / "tables" / "table2.md").read_text()
    assert_nothing_to_do(clone, every_form=True)


def test_exp_run_sets_what_runs_or_names_the_file_that_overrides_it(project):
    repo = project["repo"]
    old_model = repo / "results" / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "model.pt"
    old_mtime = old_model.stat().st_mtime_ns
    out = run(repo, "dvc", "exp", "run", "-n", "hotter", "-S", "sweep.temperature=[1,5]")
    assert "Stage 'synthesize' didn't change" in out and "Stage 'data' didn't change" in out
    assert "Running stage 'train'" in out and "Running stage 'report'" in out
    for c in TINY_SWEEP["correction"]:
        assert (repo / "results" / "runs" / c / "T5" / "focal" / "seed0" / "metrics.json").is_file(), c
    assert old_model.stat().st_mtime_ns == old_mtime  # persist: Snakemake kept the T1 runs

    shown = json.loads(run(repo, "dvc", "exp", "show", "--json"))
    by_name = {}
    for entry in shown:
        by_name[entry["name"] or entry["rev"]] = entry
        for group in entry.get("experiments") or []:
            for rev in group["revs"]:
                by_name[rev["name"]] = rev
    ran = {name: by_name[name]["data"]["params"]["results/config.yaml"]["data"] for name in ("main", "hotter")}
    assert ran["main"]["sweep"]["temperature"] == [1] and ran["hotter"]["sweep"]["temperature"] == [1, 5]
    assert ran["hotter"]["train"]["epochs"] == 1  # tiny.yaml's value, the one that ran (params.yaml says 150)
    diff = run(repo, "dvc", "params", "diff", "main")
    assert "results/config.yaml" in diff and "sweep.temperature" in diff

    # A key config/tiny.yaml sets too: changing it in params.yaml would change nothing, so it stops.
    run(repo, "git", "checkout", "--", ".")
    run(repo, "dvc", "checkout", "--force")
    bad = run(repo, "dvc", "exp", "run", "-S", "params.yaml:train.epochs=20", check=False)
    assert "params.yaml: train.epochs changed since the last commit (150 -> 20), but config/tiny.yaml" in bad
    assert "dvc exp run -S 'config/tiny.yaml:train.epochs=...'" in bad
    # What the refusal leaves: DVC writes -S into params.yaml before any stage runs (its documented behaviour), and
    # the file keeps its layout through DVC's YAML round trip, so that one line is the only change; no output moved.
    assert run(repo, "git", "status", "--porcelain").split() == ["M", "params.yaml"]
    changed = [line for line in run(repo, "git", "diff", "-U0", "params.yaml").splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert [line.split("#")[0].strip() for line in changed] == ["-  epochs: 150", "+  epochs: 20"], changed
    run(repo, "git", "checkout", "--", ".")
    assert dvc_status(repo) == {}
