"""The run key (heatedasc.runkey): the sweep as the product over the configured axes, the run folder's path and
its parse back into named axes, shared by Snakemake, training and the report; a further axis added through the
config (and one schema line) and removed again in a planned DAG; corrections named from the config."""

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, venv_env
from test_workflow import TINY, empty_tau_root, job_counts, write_override

from heatedasc.config import ConfigError, check_consistency, load_config
from heatedasc.report import REGISTRY
from heatedasc.report.context import RenderContext
from heatedasc.report.fig3 import fig3_data
from heatedasc.report.paper_tables import make_table2, render_tables
from heatedasc.report.runs import (
    correction_colors,
    correction_labels,
    discover_runs,
    fig2_embeddings,
    load_runs,
    select_cell,
)
from heatedasc.runkey import RunLayout, find_runs, parse_run_dir, run_label

PARAMS = load_config([REPO / "params.yaml"])


def layout(**axes) -> RunLayout:
    sweep = {"correction": ["ref_abc", "none"], "temperature": [1, 2.5], "loss": ["focal"], "seed": [0, 1]}
    sweep.update(axes)
    return RunLayout(sweep, corrections=["ref_abc", "ref_bc", "none"])


# ------------------------------------------------------------------------ the grid and its paths


def test_paper_grid_is_the_product_of_its_axes_in_the_layout_results_have():
    grid = RunLayout.from_config(PARAMS)
    keys = grid.keys()
    assert len(keys) == len(grid) == 3 * 8 * 2 * 3
    # correction outermost, then T, loss, seed: the order the grid has always been planned in
    expected = [f"{c}/T{t}/{loss}/seed{s}" for c in ("ref_abc", "ref_bc", "none")
                for t in (1, 5, 10, 15, 20, 25, 30, 35) for loss in ("focal", "ce") for s in (0, 1, 2)]
    assert [k.relative() for k in keys] == expected
    assert grid.pattern("results") == "results/runs/{correction}/T{temperature}/{loss}/seed{seed}"
    assert grid.glob("results") == "results/runs/*/T*/*/seed*/metrics.json"
    assert keys[0].wildcards == {"correction": "ref_abc", "temperature": "1", "loss": "focal", "seed": "0"}


def test_a_non_integral_temperature_keeps_its_decimals_and_equal_values_are_refused():
    assert [k["temperature"] for k in layout().keys(correction="ref_abc", loss="focal", seed=0)] == ["1", "2.5"]
    with pytest.raises(ValueError, match=re.escape("sweep.temperature: two values give the same folder name")):
        layout(temperature=[1, 1.0])


def test_filtering_the_grid_takes_values_or_folder_names_and_names_an_unknown_axis():
    grid = layout()
    assert grid.keys(temperature=2.5, seed="1") == grid.keys(temperature="2.5", seed=1)
    assert [k.relative() for k in grid.keys(temperature=2.5, seed=1)] == ["ref_abc/T2.5/focal/seed1",
                                                                         "none/T2.5/focal/seed1"]
    with pytest.raises(ValueError, match="no sweep axis mixup_alpha"):
        grid.keys(mixup_alpha=0.2)


def test_a_further_axis_is_one_named_folder_level_below_the_paper_axes():
    grid = layout(mixup_alpha=[0.1, 1.0])
    assert grid.names == ("correction", "temperature", "loss", "seed", "mixup_alpha")
    assert len(grid) == 2 * len(layout())
    assert grid.pattern("results") == "results/runs/{correction}/T{temperature}/{loss}/seed{seed}/mixup_alpha={mixup_alpha}"
    assert grid.keys()[:2] == [k for k in grid.keys() if k.relative().startswith("ref_abc/T1/focal/seed0/")]
    assert [k["mixup_alpha"] for k in grid.keys()[:2]] == ["0.1", "1"]
    constraints = grid.wildcard_constraints()
    assert re.fullmatch(constraints["mixup_alpha"], "0.1") and re.fullmatch(constraints["mixup_alpha"], "1")
    assert not re.fullmatch(constraints["mixup_alpha"], "0x1")  # the '.' is literal
    assert not re.fullmatch(constraints["mixup_alpha"], "0.2")  # only the configured values
    # the correction wildcard is shared with the coefficient and feature rules: every configured correction
    assert re.fullmatch(constraints["correction"], "ref_bc") and not re.fullmatch(constraints["correction"], "ref")


def test_every_run_folder_parses_back_into_its_named_axes_without_the_config():
    grid = layout(mixup_alpha=[0.1, 1.0], arch=["small"])
    for key in grid.keys():
        assert parse_run_dir(f"/x/results/runs/{key.relative()}") == key
    assert parse_run_dir("results/runs/ref_abc/T10.0/focal/seed2/mixup_alpha=0.1").values() == {
        "correction": "ref_abc", "temperature": 10.0, "loss": "focal", "seed": 2, "mixup_alpha": 0.1}
    for not_a_run in ("/tmp/pytest/l", "runs/ref_abc/Tx/focal/seed0", "runs/ref_abc/T1/focal/s0", "T1/focal/seed0",
                      "runs/ref_abc/T1/focal/seed0/=1"):
        assert parse_run_dir(not_a_run) is None, not_a_run


def test_run_label_names_the_paper_axes_then_the_others():
    wc = {"correction": "ref_abc", "temperature": "1", "loss": "focal", "seed": "0"}
    assert run_label(wc) == "ref_abc/1/focal/0"
    assert run_label({**wc, "mixup_alpha": "0.1"}) == "ref_abc/1/focal/0/mixup_alpha=0.1"
    assert run_label({"correction": "none"}) == "none/?/?/?"


def test_find_runs_finds_run_folders_of_any_axes_and_nothing_else(tmp_path):
    runs = tmp_path / "runs"
    made = ["ref_abc/T1/focal/seed0", "none/T10/ce/seed1/mixup_alpha=0.1", "none/T10/ce/seed1/mixup_alpha=0.2"]
    for rel in made + ["ref_abc/notT/focal/seed0", "ref_abc/T1/focal/seed0/resume"]:
        (runs / rel).mkdir(parents=True)
        (runs / rel / "metrics.json").write_text("{}")
    assert find_runs(tmp_path) == sorted(runs / rel / "metrics.json" for rel in made)


# ------------------------------------------------------------------------ the report reads named axes


def write_metrics(results: Path, rel: str, **metrics) -> None:
    key = parse_run_dir(rel)
    run = results / "runs" / rel
    run.mkdir(parents=True)
    values = key.values()
    m = {"correction": values["correction"], "temperature": values["temperature"], "loss": values["loss"],
         "seed": values["seed"], "acc_a": 0.5, "acc_b": 0.4, "acc_c": 0.4, "avg_bc": 0.4, "params_trainable": 1,
         "params_keras": 2, "best_epoch": 1, "selection": "last", **metrics}
    (run / "metrics.json").write_text(json.dumps(m))


def test_the_report_reads_a_further_axis_by_name_and_never_pools_it_as_seeds(tmp_path):
    for alpha, acc in (("0.1", 0.5), ("0.2", 0.7)):
        for seed in (0, 1):
            write_metrics(tmp_path, f"ref_abc/T1/focal/seed{seed}/mixup_alpha={alpha}", acc_a=acc)
    runs = load_runs(discover_runs(tmp_path))
    assert sorted(runs["mixup_alpha"]) == [0.1, 0.1, 0.2, 0.2]
    with pytest.raises(ValueError, match=r"differ in the sweep axis/axes mixup_alpha \(4 runs\)"):
        select_cell(runs, correction="ref_abc", temperature=1, loss="focal")
    with pytest.raises(ValueError, match="mixup_alpha"):  # Table 2 too: never 4 "seeds"
        make_table2(runs, temperature=1, paper_table2={}, labels={"ref_abc": "Ref.ABC"})
    cell = select_cell(runs, correction="ref_abc", temperature=1, loss="focal", mixup_alpha=0.2)
    assert sorted(cell["seed"]) == [0, 1] and set(cell["acc_a"]) == {0.7}
    # the summary metrics average over seeds too: refused before any is written
    out = {"summary": str(tmp_path / "out" / "metrics.json"), "dvc_metrics": str(tmp_path / "out" / "metrics")}
    with pytest.raises(ValueError, match="the tables and metrics differ in the sweep axis/axes mixup_alpha"):
        render_tables(RenderContext(config=PARAMS, registry=REGISTRY, runs=runs), out)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="mixup_alpha"):
        fig3_data(runs, loss="focal")


def test_runs_of_the_paper_axes_only_carry_no_further_axis(tmp_path):
    write_metrics(tmp_path, "ref_abc/T1/focal/seed0")
    write_metrics(tmp_path, "ref_abc/T1/focal/seed1")
    runs = load_runs(discover_runs(tmp_path))
    assert len(select_cell(runs, correction="ref_abc", temperature=1, loss="focal")) == 2
    cfg = {"fig2_temperatures": [1], "fig2_correction": "ref_abc", "fig2_loss": "focal", "fig2_seed": 1}
    assert fig2_embeddings(runs, cfg) == {1.0: None}  # the run is found; it has no embeddings.npz


# ------------------------------------------------------------------------ corrections named from the config


def test_a_correction_without_a_label_is_shown_under_its_own_name_never_dropped(tmp_path):
    for corr in ("ref_abc", "ref_new"):
        write_metrics(tmp_path, f"{corr}/T1/focal/seed0", acc_a=0.6)
    runs = load_runs(discover_runs(tmp_path))
    labels = correction_labels(PARAMS["report"], runs["correction"])
    assert labels == {"ref_abc": "Ref.ABC", "ref_bc": "Ref.BC", "none": "NoCorrection", "ref_new": "ref_new"}
    table = make_table2(runs, temperature=1, paper_table2={}, labels=labels).set_index("correction")
    assert list(table.index) == ["Ref.ABC", "Ref.BC", "NoCorrection", "ref_new"]
    assert table.loc["ref_new", "focal_Dev.A_mean"] == pytest.approx(60.0)
    assert table.loc["ref_new", "focal_Dev.A_n"] == 1 and table.loc["Ref.BC", "focal_Dev.A_n"] == 0
    # a label given in the config is the one shown
    relabelled = correction_labels({"corrections": {"ref_new": {"label": "Ref.NEW"}}}, runs["correction"])
    table = make_table2(runs, temperature=1, paper_table2={}, labels=relabelled)
    assert list(table["correction"]) == ["Ref.NEW", "ref_abc"]


def test_correction_colours_come_from_the_config_else_the_palette_by_position():
    report = {"corrections": {"ref_abc": {"label": "A"}, "none": {"label": "N", "color": "#123456"}}}
    labels = correction_labels(report, ["ref_x"])
    assert correction_colors(report, labels, ["c0", "c1", "c2"]) == {"A": "c0", "N": "#123456", "ref_x": "c2"}


def test_a_label_for_an_unknown_correction_is_refused_naming_the_key():
    cfg = copy.deepcopy(PARAMS)
    cfg["report"]["corrections"]["ref_xyz"] = {"label": "X"}
    with pytest.raises(ConfigError, match=r"report.corrections.ref_xyz: correction 'ref_xyz' is not a key"):
        check_consistency(cfg)


# ------------------------------------------------------------------------ a toy axis, added and removed


@pytest.mark.workflow  # four plans of the DAG, about half a minute
def test_a_toy_sweep_axis_doubles_the_planned_training_jobs_and_removing_it_restores_the_plan(tmp_path):
    """`sweep.mixup_alpha` with two values, declared by one schema line in a scratch copy of the workflow: the
    planned DAG has twice the training jobs, each in a `mixup_alpha=<value>` folder, and every other job as before;
    without the schema line the axis is refused by name; taking it out of the config again restores the plan."""
    copy_root = tmp_path / "copy"
    for part in ("src", "workflow", "profiles", "Snakefile", "params.yaml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy_root / part)
    env = {**venv_env(), "PYTHONPATH": str(copy_root / "src")}
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(empty_tau_root(tmp_path / "tau"))
    cfg["synth"]["enabled"] = False
    work = tmp_path / "work"

    def plan(sweep: dict) -> subprocess.CompletedProcess:
        override = write_override(tmp_path / "tiny.yaml", {**cfg, "sweep": sweep})
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(copy_root / "Snakefile"), "--directory",
               str(work), "--configfile", str(copy_root / "params.yaml"), str(override), "-n"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    def planned(proc) -> tuple[dict, list[str]]:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        runs = sorted(set(re.findall(r"results/runs/(\S+)/metrics\.json", out)))
        return job_counts(out), runs

    base_sweep = dict(TINY["sweep"])
    toy_sweep = {**base_sweep, "mixup_alpha": [0.1, 0.2]}

    refused = plan(toy_sweep)  # not declared in the schema: a misspelt axis must not pass as a new one
    assert refused.returncode != 0
    assert "sweep" in refused.stdout + refused.stderr and "'mixup_alpha' was unexpected" in refused.stdout + refused.stderr

    before_counts, before_runs = planned(plan(base_sweep))
    assert before_counts["train"] == 6 and len(before_runs) == 6

    schema = copy_root / "workflow" / "schemas" / "config.schema.yaml"
    text = schema.read_text()
    seed_line = next(line for line in text.splitlines() if line.strip().startswith("seed: {type: array"))
    declaration = seed_line.split("seed:")[0] + "mixup_alpha: {type: array, items: {type: number}, minItems: 1}"
    schema.write_text(text.replace(seed_line, seed_line + "\n" + declaration))
    assert yaml.safe_load(schema.read_text())["properties"]["sweep"]["properties"]["mixup_alpha"]

    with_counts, with_runs = planned(plan(toy_sweep))
    assert with_counts["train"] == 2 * before_counts["train"]
    assert {k: v for k, v in with_counts.items() if k not in ("train", "total")} == \
        {k: v for k, v in before_counts.items() if k not in ("train", "total")}  # features etc.: unchanged
    assert with_runs == sorted(f"{run}/mixup_alpha={a}" for run in before_runs for a in ("0.1", "0.2"))

    after_counts, after_runs = planned(plan(base_sweep))
    assert (after_counts, after_runs) == (before_counts, before_runs)
