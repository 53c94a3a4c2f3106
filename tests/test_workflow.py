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


def test_paper_config_plans_one_training_job_per_sweep_cell_without_data(tmp_path):
    """params.yaml's grid (docs/reproduction.md §8: 3 × 8 × 2 × 3 = 144 runs) planned on an empty dataset: one
    training job per cell of the sweep, the data jobs once or once per correction, every report artefact once."""
    from heatedasc.report.registry import REGISTRY

    sweep = yaml.safe_load((REPO / "params.yaml").read_text())["sweep"]
    root = empty_tau_root(tmp_path / "tau")
    override = write_override(tmp_path / "root.yaml", {"data": {"root": str(root)}})
    proc = snakemake(tmp_path, "-n", "--quiet", "rules", configfiles=[override])
    counts = job_counts(proc.stdout + proc.stderr)
    n_corrections = len(sweep["correction"])
    assert counts.pop("train") == n_corrections * len(sweep["temperature"]) * len(sweep["loss"]) * len(sweep["seed"])
    assert counts.pop("features") == n_corrections * 2  # the training and the test split
    for rule in ("coefficients", "feature_stats"):
        assert counts.pop(rule) == n_corrections, rule
    total = counts.pop("total")
    assert "synthesize" not in counts  # the paper config reads a real copy
    assert counts == dict.fromkeys(["prepare", "mean_spectra", "coefficient_plot", "all", *(a.name for a in REGISTRY)], 1)
    assert total == sum(job_counts(proc.stdout + proc.stderr).values()) - total


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
def test_tiny_end_to_end_run_produces_every_contract_file(tiny_project, tmp_path):
    """The tiny grid (3 corrections x 2 losses) on top of a copy of the session's tiny project (ref_abc and none,
    focal, made from nothing by Snakemake): the grown sweep runs exactly the jobs of its new cells and the report,
    with the compact terminal log, and every run has every contract file."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_project, work, symlinks=True)
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = "data/synthetic"  # the copy's own synthetic data
    override = write_override(work / "tiny.yaml", cfg)
    proc = snakemake(work, "--cores", "2", "--logger", "heatedasc", configfiles=[override])

    # The compact terminal log: a summary line, then one line per job, no reasons, no job chatter.
    out = (proc.stdout + proc.stderr).splitlines()
    from heatedasc.report.registry import REGISTRY

    # the new correction's coefficients, statistics and features, the 4 new runs, the coefficient plot (one more
    # curve), every report artefact that reads the whole grid, all; nothing of the data or of the two runs that
    # were there, and not Fig. 2, whose one run (report.fig2_*: ref_abc, focal, seed 0) was there
    new = {"coefficients": 1, "feature_stats": 1, "features": 2, "train": 4, "coefficient_plot": 1, "all": 1,
           **{artefact.name: 1 for artefact in REGISTRY if artefact.name != "fig2"}}
    total = sum(new.values())
    job_lines = [l for l in out if re.match(rf"^\[\d\d:\d\d:\d\d\] \[\d+/{total} done\] \S+", l)]
    summary = ", ".join(f"{rule} {n}" for rule, n in sorted(new.items()))
    assert f"{total} job(s) to run: {summary}" in out, out[:3]
    assert len(job_lines) == total and sum("] train " in l for l in job_lines) == 4
    assert any(l.endswith("] train ref_bc T=1 ce seed=0") for l in job_lines)
    assert f"{total} of {total} jobs done in" in out[-2] and not any("reason:" in l or "INFO heatedasc" in l for l in out)
    assert len(out) <= total + 4
    train_log = work / "logs" / "train" / "ref_bc" / "T1" / "ce" / "seed0.log"
    assert "INFO heatedasc.train: epoch 1/1" in train_log.read_text()

    results = work / "results"
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

    for key, path in REGISTRY.paths(results).items():  # every artefact, its record, and the figures it shows
        assert Path(path).stat().st_size > 0, key
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    assert len(table2) == 3
    manifest = pd.read_csv(results / "prepared" / "manifest.csv")
    assert len(manifest) == 10 * (2 * 3 + 2) + 10 * (1 * 3 + 1)
    assert json.loads((results / "metrics.json").read_text())  # dvc metrics summary is valid JSON

    # A second invocation has nothing left to do.
    again = snakemake(work, "--cores", "2", "-n", configfiles=[override])
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
