"""The rerun contract, end to end on a tiny real project: a change reruns exactly what depends on it, and nothing
else; Snakemake's own flags mean what they mean; a plan never changes what a job records; no command calls a result
current whose inputs' content differs from what it was made from (heatedasc.currency, heatedasc.job,
heatedasc.lineage).

One finished tiny project is made once (conftest.tiny_project); every test works on its own copy, a git repository
of this checkout (so a test may edit the code too) at another path. The changes a user makes (none, a param, a
library module, a raw wav, a cached intermediate) are each checked through the three front ends that decide what is
out of date, as a user runs them:
* snakemake: what `snakemake -n` plans, by rule, and the reason it prints;
* dvc: what `dvc status` reports by stage, and what `dvc repro` then reruns;
* lineage: what `heatedasc lineage` calls stale (exit status 3), by job, and why.
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
from conftest import REPO, copy_working_tree, venv_env
from test_workflow import TINY, job_counts

from heatedasc.report.registry import REGISTRY

pytestmark = pytest.mark.workflow

REPORT_RULES = (*(artefact.name for artefact in REGISTRY), "all")  # one rule per report artefact
SWEEP = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
RUNS = [f"results/runs/{c}/T1/focal/seed0/provenance.json" for c in sorted(SWEEP["correction"])]
CONFIG = "config/tiny.yaml"  # the tiny override in each copy; params.yaml's pipeline.configfiles names it
FRONT_ENDS = ("snakemake", "dvc", "lineage")


def env(work: Path) -> dict:
    return {**venv_env(), "PYTHONPATH": str(work / "src")}  # the copy's library, which a test may edit


def snakemake(work: Path, *args: str, configs=(), check=True, extra_env=None, timeout=900, code: Path | None = None):
    """`snakemake ARGS` in `work` with its config/tiny.yaml, by the workflow and library of `code` (default: `work`'s)."""
    code = code or work
    cmd = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(code / "Snakefile"), "--directory",
           str(work), "--configfile", str(code / "params.yaml"), str(work / CONFIG), *map(str, configs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env(code), **(extra_env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def counts(text: str) -> dict:
    """{rule: count} of snakemake's 'Job stats' ({} when nothing)."""
    return {} if "Nothing to be done" in text else {k: v for k, v in job_counts(text).items() if k != "total"}


def plan(work: Path, *args: str, configs=()) -> dict:
    """{rule: count} that `snakemake -n` would run ({} when nothing)."""
    out = snakemake(work, "-n", "--quiet", "rules", *args, configs=configs)
    return counts(out.stdout + out.stderr)


def lineage(work: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    """`heatedasc lineage TARGET` as a user runs it in the copy (its config files: pipeline.configfiles)."""
    cmd = [sys.executable, "-m", "heatedasc.cli", "lineage", target, *map(str, args)]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env(work))


def lineage_json(work: Path, target: str) -> tuple[int, dict]:
    """`heatedasc lineage --json`: (exit status, {stage: [its jobs]}) with each job's record, links, changes."""
    out = lineage(work, target, "--json")
    assert out.returncode in (0, 3), out.stderr[-3000:]
    jobs = {}
    for job in json.loads(out.stdout)["jobs"]:
        jobs.setdefault(job["stage"], []).append(job)
    return out.returncode, jobs


def stale_records(jobs: dict) -> list[str]:
    """The records of the jobs that are stale themselves (not through a parent)."""
    return sorted(j["record"] for js in jobs.values() for j in js if not j["own_ok"])


def run(work: Path, *cmd: str, check: bool = True, timeout: int = 900) -> str:
    from test_dvc import run as run_in_repo

    return run_in_repo(work, *cmd, check=check, timeout=timeout)


def dvc_status(work: Path) -> dict:
    return json.loads(run(work, "dvc", "status", "--json"))


def git_commit(work: Path, message: str) -> None:
    run(work, "git", "add", "-A")
    run(work, "git", "commit", "-q", "-m", message)


def override(work: Path, name: str, cfg: dict) -> Path:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def edit_config(work: Path, section: str, key: str, value) -> None:
    path = work / CONFIG
    data = yaml.safe_load(path.read_text())
    data.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


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
    """A git repository of this checkout at another path holding a copy of the finished tiny project (conftest.py;
    its sweep is SWEEP) with the dates copied too: config/tiny.yaml is the tiny override, and params.yaml's
    pipeline.configfiles names it, so `dvc repro` and `heatedasc lineage` run it with no arguments."""
    from dvc.utils.serialize import modify_yaml

    assert yaml.safe_load((tiny_project / "tiny.yaml").read_text())["sweep"] == SWEEP
    work = tmp_path / "copy"
    copy_working_tree(work)
    shutil.copy2(tiny_project / "tiny.yaml", work / CONFIG)
    with modify_yaml(work / "params.yaml") as params:  # DVC's own YAML writer, as `dvc exp run -S` edits it
        params["pipeline"]["configfiles"] = f"params.yaml {CONFIG}"
    run(work, "git", "init", "-q", "-b", "main")
    git_commit(work, "code")
    for part in ("data", "results", "logs", ".snakemake"):
        shutil.copytree(tiny_project / part, work / part, symlinks=True)
    return work


@pytest.fixture(params=FRONT_ENDS)
def front_end(request, project) -> str:
    """Which front end a test asks. For dvc, the copy's results are first committed as they are (`dvc repro config`
    writes the merged configuration the stages take their params from, `dvc commit` records every stage's deps and
    outs in dvc.lock), which leaves `dvc status` clean."""
    if request.param == "dvc":
        run(project, "dvc", "repro", "config")
        run(project, "dvc", "commit", "--force")
        git_commit(project, "dvc commit")
        assert dvc_status(project) == {}
    return request.param


def downstream_of_features(n_feature_jobs: int) -> dict:
    return {"features": n_feature_jobs, "train": len(SWEEP["correction"]), **{r: 1 for r in REPORT_RULES}}


# what follows a change to the uncorrected runs only: the report, but Fig. 2 (it shows Ref.ABC's embeddings)
AFTER_NONE = {"train": 1, **{r: 1 for r in REPORT_RULES if r != "fig2"}}
# what follows a change to every training run
AFTER_TRAIN = {"train": len(SWEEP["correction"]), **{r: 1 for r in REPORT_RULES}}


# --- One change, three front ends ------------------------------------------------------------------------------


def test_a_copy_at_another_path_with_dates_in_any_order_has_nothing_to_do(project, front_end):
    before = records(project)
    scramble_dates(project / "results", seed=1)
    scramble_dates(project / "data", seed=2)
    scramble_dates(project / "logs", seed=3, hours_ago=24)  # Snakemake compares benchmark files as outputs too
    if front_end == "snakemake":
        assert plan(project) == {}
        assert plan(project, "--profile", str(REPO / "slurm")) == {}  # the cluster command plans nothing either
        assert records(project) == before  # planning re-dates outputs; it never rewrites what a job recorded
    elif front_end == "dvc":
        assert dvc_status(project) == {}
        assert "Data and pipelines are up to date." in run(project, "dvc", "status")
    else:
        status, jobs = lineage_json(project, "results/tables/table3.csv")
        assert status == 0 and stale_records(jobs) == []
        assert {stage: len(js) for stage, js in jobs.items()} == {
            "tables": 1, "train": 2, "features": 4, "feature_stats": 2, "coefficients": 2, "mean_spectra": 1,
            "prepare": 1, "synthesize": 1}
        [prepare] = jobs["prepare"]
        raw = [link for link in prepare["links"] if link["key"] == "audio" and link["role"] == "input"]
        assert raw and all(len(link["digest"]) == 32 for link in raw)  # MD5, as DVC
        assert "workflow/scripts/prepare.py" in prepare["code"] and "heatedasc/prepare.py" in prepare["code"]
        assert prepare["packages"]["torch"] == "2.11.0"
        train = jobs["train"][0]
        assert train["params"]["train"]["epochs"] == 1 and "execution" not in train["params"]  # speed is not a param
        text = lineage(project, "results/tables/table3.csv", "--no-plan").stdout
        assert "[ok] tables" in text and "prepare" in text


def test_a_param_reruns_the_jobs_that_read_it_and_names_it_as_the_reason(project, front_end):
    edit_config(project, "train", "epochs", 2)
    if front_end == "snakemake":
        out = snakemake(project, "-n").stdout
        assert counts(out) == AFTER_TRAIN
        assert "params.train.epochs: 1 -> 2" in out  # the reason Snakemake prints names the change in words
    elif front_end == "dvc":
        # DVC sees the edit at the config stage; once that stage has merged it into results/config.yaml, the
        # stages whose params changed, and no stage before them
        assert set(dvc_status(project)) == {"config"}
        run(project, "dvc", "repro", "config")
        assert set(dvc_status(project)) == {"train", "report"}
        run(project, "git", "checkout", "--", ".")  # the edit undone: nothing to do again, in both tools
        assert dvc_status(project) == {} and plan(project) == {}
    else:
        status, jobs = lineage_json(project, "results/tables/table3.csv")
        assert status == 3 and stale_records(jobs) == RUNS  # exactly the training jobs, the table through them
        assert [j["changes"] for j in jobs["train"]] == [["params.train.epochs: 1 -> 2"]] * 2


def test_a_library_module_reruns_the_jobs_whose_code_imports_it(project, front_end):
    losses = project / "src" / "heatedasc" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    if front_end == "snakemake":
        out = snakemake(project, "-n").stdout
        assert counts(out) == AFTER_TRAIN
        assert "code heatedasc\u2215losses.py changed" in out  # the reason's token file: "/" as "∕" in its name
    elif front_end == "dvc":
        assert set(dvc_status(project)) == {"train"}
        run(project, "git", "checkout", "--", "src/heatedasc/losses.py")
        assert dvc_status(project) == {}
    else:
        status, jobs = lineage_json(project, "results/tables/table3.csv")
        assert status == 3 and stale_records(jobs) == RUNS
        assert [j["changes"] for j in jobs["train"]] == [["code heatedasc/losses.py changed"]] * 2


def test_a_raw_wav_reruns_its_generator_and_what_read_it(project, front_end):
    """One raw wav of the generated set, damaged. The generator owns that folder and rewrites it: Snakemake reruns
    the generator and, as it always does after a rerun job, everything after it. DVC reruns the synthesize stage
    alone: its output is then back to what dvc.lock records, so no later stage's deps changed, and both tools agree
    afterwards that nothing is left to do (the later jobs' records match the rewritten, identical bytes)."""
    wav = sorted((project / "data" / "synthetic" / "audio").glob("*.wav"))[0]
    flip_last_byte(wav)
    if front_end == "snakemake":
        planned = plan(project)
        assert planned["synthesize"] == 1 and planned["prepare"] == 1 and planned["train"] == len(SWEEP["correction"])
    elif front_end == "dvc":
        assert "synthesize" in dvc_status(project)
        out = run(project, "dvc", "repro")
        assert "Running stage 'synthesize'" in out and "Running stage 'train'" not in out
        assert dvc_status(project) == {}
        assert "Data and pipelines are up to date." in run(project, "dvc", "status")
        assert plan(project) == {}
        assert plan(project, "--profile", "slurm") == {}  # the literal cluster command plans nothing either
    else:
        # named by file, at the generator (which owns it) and at prepare (which read it)
        status, jobs = lineage_json(project, "results/runs/none/T1/focal/seed0/metrics.json")
        assert status == 3  # 3: checked, found stale
        assert jobs["prepare"][0]["changes"] == [f"raw audio audio/{wav.name} changed"]
        # records name paths relative to the working directory (portable)
        assert [link["path"] for link in jobs["synthesize"][0]["links"] if link["status"] == "changed"] == [
            "data/synthetic/audio"]
        assert stale_records(jobs) == ["data/synthetic/provenance.json", "results/prepared/provenance.json"]
        out = lineage(project, "results/tables/table2.csv", "--no-plan")  # a raw file needs no plan to be seen
        assert out.returncode == 3, out.stderr
        assert "STALE" in out.stdout and f"✗ raw audio audio/{wav.name} changed" in out.stdout


def test_a_hand_edited_intermediate_reruns_its_job_and_everything_down_to_the_tables(project, front_end):
    cache = project / "results" / "features" / "none" / "evaluate.npy"
    stat = cache.stat()
    flip_last_byte(cache)  # same size; the date put back by hand: only the content (and the kernel's ctime) tells
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if front_end == "snakemake":
        assert plan(project) == {"features": 1, **AFTER_NONE}
        snakemake(project, "--cores", "2")
        assert plan(project) == {}
        assert lineage(project, "results/tables/table2.csv").returncode == 0  # and lineage agrees
    elif front_end == "dvc":
        # DVC trusts what it recorded of a file while its size, date and inode are unchanged (its state cache), so
        # this edit, its date put back, is one `dvc status` cannot see; Snakemake's plan and lineage see it
        assert dvc_status(project) == {}
        os.utime(cache)  # the same edit as an editor leaves it, dated now: the stage that wrote it and its reader
        assert dvc_status(project) == {"data": [{"changed outs": {"results/features": "modified"}}],
                                       "train": [{"changed deps": {"results/features": "modified"}}]}
    else:
        out = lineage(project, "results/tables/table2.csv")
        assert out.returncode == 3 and "✗ changed output cache: results/features/none/evaluate.npy" in out.stdout


def test_each_changed_module_reruns_exactly_the_jobs_whose_code_imports_it(project):
    """Modules of the copy's package get an edit (three alone, then all at once); for each, `snakemake -n` (its
    decisions, as heatedasc.lineage.plan reads them) and the lineage audit must mark exactly the jobs whose adapter
    script imports it (directly or not). The expected set comes from the standard library's ModuleFinder, not from
    the workflow's own import reader."""
    from test_layout import adapter_code

    from heatedasc import lineage
    from heatedasc.report.registry import REGISTRY

    copy = work = project
    override = project / CONFIG

    # Which modules each rule's script runs (the job's bookkeeping left out: it describes results, not makes them).
    scripts = {"synthesize": "synthesize", "prepare": "prepare", "mean_spectra": "mean_spectra",
               "coefficients": "coefficients", "coefficient_plot": "coefficient_plot", "feature_stats": "feature_stats",
               "features": "features", "train": "train", **{a.name: "report_artefact" for a in REGISTRY}}
    runs = {script: adapter_code(copy / "workflow" / "scripts" / f"{script}.py") for script in set(scripts.values())}

    package = copy / "src" / "heatedasc"  # its modules, and its subpackages by their __init__.py
    targets = {p.stem: p for p in package.glob("*.py") if p.stem != "__init__"}
    targets.update({p.parent.name: p for p in package.glob("*/__init__.py")})
    modules = sorted(targets)
    originals = {m: t.read_text() for m, t in targets.items()}
    reason = {m: f"code heatedasc/{t.relative_to(package).as_posix()} changed" for m, t in targets.items()}
    expected = {m: {rule for rule, script in scripts.items() if m in runs[script]} for m in modules}

    def check(edited) -> int:
        """Edit `edited`, plan and audit: per module, `snakemake -n` and lineage mark exactly its importers.
        Returns how many of the edited modules are code of some job."""
        for m in edited:
            targets[m].write_text(originals[m] + "\n# an edit\n")
        try:
            decisions = lineage.plan([str(copy / "params.yaml"), str(override)], base=work, snakefile=copy / "Snakefile",
                                     env=env(copy))
            decided = {}
            for d in decisions.values():
                decided.setdefault(d["rule"], set()).update(c for c in d["reasons"] if c.startswith("code "))
            # nothing but the edited files is ever named
            assert {c for reasons in decided.values() for c in reasons} <= {reason[m] for m in edited}, edited
            root = lineage.audit(work / "results" / "report.html", results_dir=work / "results", base=work,
                                 decisions=decisions, data_root="data/synthetic")
            jobs = lineage.to_dict(root)["jobs"]
            for m in edited:
                marked = {rule for rule, reasons in decided.items() if reason[m] in reasons}
                own = {n["stage"] for n in jobs if reason[m] in n["changes"]}
                assert marked == expected[m], (m, marked, expected[m])
                assert own == expected[m], (m, own, expected[m])
            return sum(bool(expected[m]) for m in edited)
        finally:
            for m in edited:
                targets[m].write_text(originals[m])

    # One module at a time, for a leaf of the training code, a module deep under correction and features, and
    # one that no job runs: exactly the expected jobs and nothing else.
    assert expected["losses"] == {"train"} and not expected["compare"] and len(expected["dsp"]) > 3, expected
    for module in ("losses", "dsp", "compare"):
        check([module])

    # Then every module edited at once (one plan instead of one per module: each plan costs seconds): each job
    # names each changed file it imports, so per module the jobs naming it must be exactly its importers.
    checked = check(modules)
    assert checked >= 12  # most modules are code of some job


# --- Snakemake's own flags, and what no command may do -----------------------------------------------------


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


def test_a_rerun_that_changed_bytes_is_followed_downstream_even_after_an_interruption(project):
    """The features of one correction rebuilt with another log offset, then the run stops there (as a kill between
    two jobs would leave it): the training runs that read the old caches, and the report, are out of date by
    content, whatever the dates say."""
    offset = override(project, "offset.yaml", {"features": {"log_offset": 1.0e-6}})
    snakemake(project, "--cores", "2", "--until", "features", configs=[offset])
    scramble_dates(project / "results", seed=3)
    assert plan(project, configs=[offset]) == {"train": 2, **{r: 1 for r in REPORT_RULES}}
    out = lineage(project, "results/runs/none/T1/focal/seed0/metrics.json", "--configfile", CONFIG, offset)
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


def test_no_plan_from_any_config_changes_what_a_job_records(project):
    """Plans with other configurations, several at once and a lineage audit among them, then the training job run
    exactly as a cluster runs it (its own snakemake process, --mode remote): it records what it ran."""
    before = records(project)
    others = [override(project, f"e{n}.yaml", {"train": {"epochs": n}}) for n in (5, 7, 9)]
    plans = [subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(project / "Snakefile"), "--directory",
         str(project), "--configfile", str(project / "params.yaml"), str(project / CONFIG), str(o)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(project)) for o in others]
    assert lineage(project, "results/tables/table3.csv", "--configfile", CONFIG, others[0]).returncode == 3
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
    out = lineage(project, "results/runs/none/T1/focal/seed0/metrics.json", "--configfile", CONFIG, epochs)
    assert out.returncode == 0 and "! outputs marked current by snakemake --touch, not recomputed" in out.stdout


def test_heatedasc_report_leaves_the_tracked_results_as_they_were(project):
    results = tree_hashes(project / "results")
    proc = subprocess.run([sys.executable, "-m", "heatedasc.cli", "report"], cwd=project, capture_output=True, text=True,
                          env=env(project))
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
    override(gen, CONFIG, cfg)
    snakemake(gen, "--cores", "1", "synthetic_data", code=REPO)
    work = tmp_path / "work"
    work.mkdir()
    cfg["synth"] = {"enabled": False}
    override(work, CONFIG, cfg)
    snakemake(work, "--cores", "2", "results/prepared/manifest.csv", "results/coefficients/ref_abc.npz", code=REPO)
    record = json.loads((work / "results/prepared/provenance.json").read_text())
    assert "{data.root}/meta.csv" in record["inputs"]["meta"]
    assert not any(str(tmp_path) in p for group in record["inputs"].values() for p in group)

    data2 = tmp_path / "mnt2" / "tau"
    data2.parent.mkdir()
    shutil.move(data1, data2)
    moved = tmp_path / "elsewhere" / "work"
    shutil.copytree(work, moved, symlinks=True)
    cfg["data"]["root"] = str(data2)
    override(moved, CONFIG, cfg)
    out = snakemake(moved, "results/prepared/manifest.csv", "results/coefficients/ref_abc.npz", "-n", "--quiet", "rules",
                    code=REPO)
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
                           str(REPO / "config" / "smoke.yaml")], capture_output=True, text=True, env=env(REPO))
    assert proc.returncode != 0
    assert "rule forgetful: every rule that writes files must name its record `provenance=...`" in proc.stdout + proc.stderr


def test_a_run_whose_results_are_not_current_at_its_end_fails_naming_them(project):
    """The end-of-run check (what keeps `dvc repro` from locking an inconsistent state): a raw wav changes while
    the run trains, so the data jobs that read it are out of date when the run ends."""
    for run in (project / "results" / "runs").glob("*/T1/focal/seed0"):
        (run / "metrics.json").unlink()  # both training runs and the report to do
    shutil.rmtree(project / "logs" / "train")  # the first run's logs: a new one means training has begun
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(project / "Snakefile"), "--directory",
           str(project), "--configfile", str(project / "params.yaml"), str(project / CONFIG)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(project))
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
