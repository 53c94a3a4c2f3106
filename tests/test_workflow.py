"""The workflow as users run it: Snakemake planning the paper grid, a tiny real run end to end,
and bad input stopping at the prepare stage."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, venv_env

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, configfiles=(), check=True, timeout=900):
    cmd = SNAKEMAKE + [
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(REPO / "params.yaml"), *map(str, configfiles),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def job_counts(output: str) -> dict:
    """Parse Snakemake's 'Job stats' table into {rule: count}."""
    counts = {}
    block = output.split("Job stats:", 1)[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def write_override(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def empty_tau_root(root: Path) -> Path:
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n")
    for fold in ("train", "evaluate"):
        (root / "evaluation_setup" / f"fold1_{fold}.csv").write_text("filename\tscene_label\n")
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n")
    return root


def test_paper_config_plans_144_training_jobs_without_data(tmp_path):
    root = empty_tau_root(tmp_path / "tau")
    override = write_override(tmp_path / "root.yaml", {"data": {"root": str(root)}})
    proc = snakemake(tmp_path, "-n", "--quiet", "rules", configfiles=[override])
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == 3 * 8 * 2 * 3 == 144
    assert counts["prepare"] == 1
    assert counts["mean_spectra"] == 1
    assert counts["coefficients"] == 3
    assert counts["feature_stats"] == 3
    assert counts["features"] == 3 * 2
    report_rules = ("tables", "fig3", "fig2", "calibration", "confusion", "significance", "report_html")
    for rule in report_rules + ("coefficient_plot", "all"):
        assert counts[rule] == 1, rule
    assert "synthesize" not in counts  # the paper config reads a real copy
    assert counts["total"] == 144 + 1 + 1 + 3 + 3 + 6 + len(report_rules) + 1 + 1


def test_trimmed_grid_plans_only_its_runs(tmp_path):
    root = empty_tau_root(tmp_path / "tau")
    override = write_override(
        tmp_path / "trim.yaml",
        {"data": {"root": str(root)},
         "sweep": {"correction": ["ref_abc"], "temperature": [1, 10], "loss": ["focal"], "seed": [0, 1, 2]}},
    )
    counts = job_counts(snakemake(tmp_path, "-n", "--quiet", "rules", configfiles=[override]).stdout)
    assert counts["train"] == 6
    assert counts["features"] == 2


@pytest.mark.parametrize("override, named", [
    ({"train": {"selection": "best"}}, ("selection", "best")),
    ({"train": {"epoch": 5}}, ("'epoch' was unexpected",)),  # a misspelt key is not silently ignored
    ({"sweep": {"correction": ["ref_abc", "ref_ab"]}}, ("sweep.correction", "'ref_ab'", "correction.references")),
])
def test_bad_config_value_is_rejected_naming_the_key(tmp_path, override, named):
    proc = snakemake(tmp_path, "-n", configfiles=[write_override(tmp_path / "bad.yaml", override)], check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    for text in named:
        assert text in out, (text, out[-3000:])


TINY = {
    "data": {"duration_s": 0.5},
    "synth": {
        "enabled": True, "seed": 3, "clip_seconds": 0.5,
        "train_parallel_per_scene": 2, "train_a_only_per_scene": 2,
        "evaluate_parallel_per_scene": 1, "evaluate_a_only_per_scene": 1,
    },
    "features": {"n_mels": 32},
    "execution": {"features": {"batch_size": 16}},
    "train": {"epochs": 1, "batch_size": 16},
    "sweep": {"correction": ["ref_abc", "ref_bc", "none"], "temperature": [1], "loss": ["focal", "ce"], "seed": [0]},
    "report": {"fig2_temperatures": [1]},
    "resources": {
        "train": {"cpus_per_task": 1}, "features": {"cpus_per_task": 1}, "default": {"cpus_per_task": 1},
    },
}


@pytest.mark.workflow
def test_tiny_end_to_end_run_produces_every_contract_file(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(tmp_path / "data" / "synthetic")
    override = write_override(tmp_path / "tiny.yaml", cfg)
    proc = snakemake(tmp_path, "--cores", "2", "--logger", "heatedasc", configfiles=[override])

    # The compact terminal log: a summary line, then one line per job, no reasons, no job chatter.
    out = (proc.stdout + proc.stderr).splitlines()
    total = 1 + 1 + 1 + 3 + 1 + 3 + 6 + 6 + 7 + 1  # synth, prepare, spectra, coef, plot, stats, features, train, report, all
    job_lines = [l for l in out if re.match(rf"^\[\d\d:\d\d:\d\d\] \[\d+/{total} done\] \S+", l)]
    assert any(l.startswith(f"{total} job(s) to run: all 1, calibration 1,") for l in out), out[:3]
    assert len(job_lines) == total and sum("] train " in l for l in job_lines) == 6
    assert any(l.endswith("] train ref_abc T=1 focal seed=0") for l in job_lines)
    assert f"{total} of {total} jobs done in" in out[-2] and not any("reason:" in l or "INFO heatedasc" in l for l in out)
    assert len(out) <= total + 4
    train_log = tmp_path / "logs" / "train" / "ref_abc" / "T1" / "focal" / "seed0.log"
    assert "INFO heatedasc.train: epoch 1/1" in train_log.read_text()

    results = tmp_path / "results"
    for c in ("ref_abc", "ref_bc", "none"):
        for loss in ("focal", "ce"):
            run = results / "runs" / c / "T1" / loss / "seed0"
            for name in ("metrics.json", "history.csv", "model.pt", "embeddings.npz", "predictions.npz", "provenance.json"):
                assert (run / name).stat().st_size > 0, run / name
            m = json.loads((run / "metrics.json").read_text())
            for key in ("acc_a", "acc_b", "acc_c", "avg_bc"):
                assert 0.0 <= m[key] <= 1.0, (key, m[key])
            assert m["avg_bc"] == pytest.approx((m["acc_b"] + m["acc_c"]) / 2)
            assert m["params_keras"] - m["params_trainable"] == 2 * sum([16, 32, 32, 64, 64])
            assert m["selection"] == "test" and m["best_epoch"] == 1
            prov = json.loads((run / "provenance.json").read_text())
            assert prov["wildcards"] == {"correction": c, "temperature": "1", "loss": loss, "seed": "0"}
            assert all(len(h) == 32 for d in prov["inputs"].values() for h in d.values())  # MD5, as DVC

    for name in ("tables/table2.csv", "tables/table2.md", "tables/table3.csv", "tables/table3.md",
                 "figures/fig3.png", "figures/fig3.csv", "figures/fig2.png", "metrics.json",
                 "coefficients/coefficients.png"):
        assert (results / name).stat().st_size > 0, name
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    assert len(table2) == 3
    manifest = pd.read_csv(results / "prepared" / "manifest.csv")
    assert len(manifest) == 10 * (2 * 3 + 2) + 10 * (1 * 3 + 1)
    assert json.loads((results / "metrics.json").read_text())  # dvc metrics summary is valid JSON

    # A second invocation has nothing left to do.
    again = snakemake(tmp_path, "--cores", "2", "-n", configfiles=[override])
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.workflow
def test_bad_meta_row_stops_at_prepare_and_leaves_nothing(tmp_path):
    """A user's TAU copy (synthesis off) whose meta.csv names a file that is not there."""
    import shutil

    cfg = json.loads(json.dumps(TINY))
    generated = tmp_path / "generated"
    cfg["data"]["root"] = str(generated)
    snakemake(tmp_path / "gen", "--cores", "1", "synthetic_data", configfiles=[write_override(tmp_path / "g.yaml", cfg)])
    root = tmp_path / "data" / "my-TAU"
    shutil.copytree(generated, root, ignore=shutil.ignore_patterns(".heatedasc-synthetic.json", "provenance.json"))
    cfg["data"]["root"] = str(root)
    cfg["synth"] = {"enabled": False}
    override = write_override(tmp_path / "tiny.yaml", cfg)
    meta = root / "meta.csv"
    lines = meta.read_text().splitlines()
    victim = lines[5].split("\t")[0]
    (root / victim).unlink()
    proc = snakemake(tmp_path, "--cores", "1", configfiles=[override], check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Error in rule prepare" in out
    assert victim in out
    assert not (tmp_path / "results" / "prepared").exists() or not any((tmp_path / "results" / "prepared").iterdir())
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.workflow
def test_lineage_audit_reports_exactly_what_went_stale(tmp_path):
    from heatedasc import lineage

    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(tmp_path / "data" / "synthetic")
    cfg["sweep"] = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    override = write_override(tmp_path / "tiny.yaml", cfg)
    snakemake(tmp_path, "--cores", "2", configfiles=[override])
    configs = [str(REPO / "params.yaml"), str(override)]

    def audit(target, config_files=configs):
        decisions = lineage.plan(config_files, base=tmp_path)
        return lineage.audit(tmp_path / target, results_dir=tmp_path / "results", base=tmp_path, decisions=decisions,
                             data_root=cfg["data"]["root"])

    root = audit("results/tables/table3.csv")
    assert not root.stale and lineage.stale_records(root) == []
    tree = lineage.to_dict(root)
    stages = sorted(j["stage"] for j in tree["jobs"])
    assert stages == sorted(["tables", "train", "train", "features", "features", "features", "features",
                             "feature_stats", "feature_stats", "coefficients", "coefficients", "mean_spectra", "prepare",
                             "synthesize"])
    prepare = next(j for j in tree["jobs"] if j["stage"] == "prepare")
    raw = [l for l in prepare["links"] if l["key"] == "audio" and l["role"] == "input"]
    assert raw and all(len(l["digest"]) == 32 for l in raw)
    assert "workflow/scripts/prepare.py" in prepare["code"] and "heatedasc/prepare.py" in prepare["code"]
    assert prepare["packages"]["torch"] == "2.11.0"
    train_job = next(j for j in tree["jobs"] if j["stage"] == "train")
    assert train_job["params"]["train"]["epochs"] == 1 and "execution" not in train_job["params"]
    text = lineage.render(root)
    assert "[ok] tables" in text and "prepare" in text

    # One param changed: exactly the training jobs go stale themselves (the table through them), by key.
    changed = json.loads(json.dumps(cfg))
    changed["train"]["epochs"] = 2
    root = audit("results/tables/table3.csv", [str(REPO / "params.yaml"), str(write_override(tmp_path / "c.yaml", changed))])
    stale = lineage.stale_records(root)
    assert sorted(Path(s).parts[-5] for s in stale) == ["none", "ref_abc"]  # runs/<c>/T1/focal/seed0/provenance.json
    assert all(s.endswith("seed0/provenance.json") for s in stale)
    assert root.stale
    train = next(j for j in lineage.to_dict(root)["jobs"] if j["stage"] == "train")
    assert train["changes"] == ["params.train.epochs: 1 -> 2"]

    # One raw wav changed: named by file, at the generator (which owns it) and at prepare (which read it).
    wav = sorted((tmp_path / "data" / "synthetic" / "audio").glob("*.wav"))[0]
    data = bytearray(wav.read_bytes())
    data[-1] ^= 0xFF
    wav.write_bytes(bytes(data))
    root = audit("results/runs/none/T1/focal/seed0/metrics.json")
    jobs = {j["stage"]: j for j in lineage.to_dict(root)["jobs"]}
    assert jobs["prepare"]["changes"] == [f"raw audio audio/{wav.name} changed"]
    # records name paths relative to the working directory (portable): here the absolute data root lies inside it
    assert [l["path"] for l in jobs["synthesize"]["links"] if l["status"] == "changed"] == ["data/synthetic/audio"]
    assert sorted(Path(s).parent.name for s in lineage.stale_records(root)) == ["prepared", "synthetic"]
    out = subprocess.run([sys.executable, "-m", "heatedasc.cli", "lineage", "results/tables/table2.csv",
                          "--configfile", str(override)], cwd=tmp_path, capture_output=True, text=True,
                         env={**venv_env(), "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 3, out.stderr  # 3: checked, found stale
    assert "STALE" in out.stdout and f"✗ raw audio audio/{wav.name} changed" in out.stdout


@pytest.mark.workflow
def test_a_changed_module_reruns_exactly_the_jobs_whose_code_imports_it(tmp_path):
    """In a scratch copy of the package, modules get an edit (three alone, then all at once); for each, `snakemake -n`
    and the lineage audit must mark exactly the jobs whose adapter script imports it (directly or not). The expected
    set comes from the standard library's ModuleFinder, not from the workflow's own import reader."""
    import modulefinder
    import shutil

    from heatedasc import lineage
    from heatedasc.codedeps import NOT_CODE

    copy = tmp_path / "copy"
    for part in ("src", "workflow", "profiles", "Snakefile", "params.yaml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / part)
    env = {**venv_env(), "PYTHONPATH": str(copy / "src")}
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = "data/synthetic"
    cfg["sweep"] = {"correction": ["ref_abc"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    override = write_override(tmp_path / "tiny.yaml", cfg)
    work = tmp_path / "work"
    base_cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(copy / "Snakefile"), "--directory", str(work),
                "--configfile", str(copy / "params.yaml"), str(override)]
    subprocess.run(base_cmd + ["--cores", "2"], check=True, env=env, capture_output=True, timeout=900)

    # Which modules each rule's script runs, by ModuleFinder over the copy.
    scripts = {"synthesize": "synthesize", "prepare": "prepare", "mean_spectra": "mean_spectra",
               "coefficients": "coefficients", "coefficient_plot": "coefficient_plot", "feature_stats": "feature_stats",
               "features": "features", "train": "train"}
    from heatedasc.report.registry import REGISTRY

    scripts.update({a.name: "report_artefact" for a in REGISTRY})
    runs = {}
    for script in set(scripts.values()):
        finder = modulefinder.ModuleFinder(path=[str(copy / "src")], excludes=["torch", "numpy", "pandas", "scipy",
                                           "matplotlib", "seaborn", "soundfile", "torchaudio", "jinja2", "yaml",
                                           "tqdm", "markupsafe", "jsonschema"])
        finder.run_script(str(copy / "workflow" / "scripts" / f"{script}.py"))
        runs[script] = {m.split(".")[1] for m in finder.modules if m.startswith("heatedasc.")}
    not_code = set(NOT_CODE)  # the job's log, its record and the workflow's checks: they describe results, not make them

    modules = sorted({p.stem for p in (copy / "src" / "heatedasc").glob("*.py") if p.stem != "__init__"} | {"report"})
    targets = {m: copy / "src" / "heatedasc" / (f"{m}/__init__.py" if m == "report" else f"{m}.py") for m in modules}
    originals = {m: t.read_text() for m, t in targets.items()}
    reason = {m: f"code heatedasc/{t.relative_to(copy / 'src' / 'heatedasc').as_posix()} changed" for m, t in targets.items()}
    expected = {m: {rule for rule, script in scripts.items() if m in runs[script] - not_code} for m in modules}

    def check(edited) -> int:
        """Edit `edited`, plan and audit: per module, `snakemake -n` and lineage mark exactly its importers.
        Returns how many of the edited modules are code of some job."""
        for m in edited:
            targets[m].write_text(originals[m] + "\n# an edit\n")
        try:
            decisions = lineage.plan([str(copy / "params.yaml"), str(override)], base=work, snakefile=copy / "Snakefile",
                                     env=env)
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


@pytest.mark.workflow
def test_holdout_is_left_out_of_every_fit_and_the_test_split_is_untouched(tmp_path):
    """train.selection holdout end to end (the tiny pipeline, one correction, one run of one epoch): the
    correction's mean spectra, the feature statistics and training's validation use one and the same set of
    held-out recording locations, and the test split reaches the features and the metrics whole."""
    import numpy as np

    from heatedasc.feature_stats import load_stats
    from heatedasc.tau import parse_filename, read_manifest

    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(tmp_path / "data" / "synthetic")
    cfg["sweep"].update(correction=["ref_abc"], loss=["focal"])
    cfg["train"].update(selection="holdout", holdout_fraction=0.25, holdout_seed=0)
    override = write_override(tmp_path / "holdout.yaml", cfg)
    snakemake(tmp_path, "--cores", "2", "train_all", configfiles=[override])
    results = tmp_path / "results"
    features = results / "features" / "ref_abc"
    manifest = read_manifest(results / "prepared" / "manifest.csv")
    train_rows, test_rows = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "evaluate"]

    # training validated on these locations (listed by the run itself)
    metrics = json.loads((results / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "metrics.json").read_text())
    held = set(metrics["validation_locations"])
    assert metrics["selection"] == "holdout" and held < set(train_rows["identifier"])
    assert metrics["n_validation"] == train_rows["identifier"].isin(held).sum()

    # the correction: the mean spectra are those of the a/b/c triplets outside the held-out locations
    devices_per_group = train_rows.groupby("group")["device"].agg(set)
    triplets = train_rows[train_rows["group"].isin(devices_per_group[devices_per_group == {"a", "b", "c"}].index)]
    spectra = np.load(results / "coefficients" / "mean_spectra.npz")
    assert sorted(spectra["filenames"]) == sorted(triplets.loc[~triplets["identifier"].isin(held), "filename"])
    assert held & set(triplets["identifier"])  # some triplet locations were held out: the check has teeth
    coefficients = np.load(results / "coefficients" / "ref_abc.npz")
    assert not {parse_filename(f)["identifier"] for f in coefficients["files"]} & held

    # the statistics: fitted on exactly the other training files. The standardised cache has mean 0 and sd 1 per
    # mel band over those rows (to float16 rounding), and not over all training rows.
    stats = load_stats(features / "stats.npz")
    index = pd.read_csv(features / "train.csv")
    fitted = ~index["identifier"].isin(held).to_numpy()
    assert stats["n_files"] == fitted.sum() == (~train_rows["identifier"].isin(held)).sum()
    cache = np.load(features / "train.npy").astype(np.float64)
    assert sorted(index["filename"]) == sorted(train_rows["filename"])  # training holds every train file
    band_mean, band_sd = cache[fitted].mean(axis=(0, 2)), cache[fitted].std(axis=(0, 2))
    assert np.abs(band_mean).max() < 2e-3 and np.abs(band_sd - 1).max() < 2e-3, (band_mean, band_sd)
    assert np.abs(cache.mean(axis=(0, 2))).max() > 2e-2  # over every row it is not: the held-out rows differ
    for record in (features / "stats.provenance.json", results / "coefficients" / "mean_spectra.provenance.json"):
        assert json.loads(record.read_text())["params"]["holdout"] == {"fraction": 0.25, "seed": 0}, record

    # the test split: every evaluate file, whole, in the evaluation cache and the metrics; none held out
    evaluate = pd.read_csv(features / "evaluate.csv")
    assert sorted(evaluate["filename"]) == sorted(test_rows["filename"])
    assert metrics["n_test"] == {d: int((test_rows["device"] == d).sum()) for d in ("a", "b", "c")}
    assert not held & set(test_rows["identifier"]) and "holdout" not in set(manifest["split"])
    assert "the test set (fold1_evaluate) was not used" in metrics["selection_note"]
