"""`heatedasc compare`: identical, within the measured spread of another CPU, or different (exit 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import venv_env

from heatedasc.compare import compare, differences, verdict

REFERENCE = {
    "n_runs": 4,
    "ref_abc": {"focal": {"avg_bc_T1": 0.9125, "acc_a_T1": 0.975, "best_avg_bc": 0.9125, "best_T": 1.0,
                          "n_seeds_T1": 2}},
    "best_run": {"correction": "ref_abc", "loss": "focal", "seed": 0, "avg_bc": 0.9375},
}


def write(results, summary):
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(summary))


def edited(**changes):
    s = json.loads(json.dumps(REFERENCE))
    for dotted, value in changes.items():
        node = s
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return s


def test_the_same_numbers_are_identical(tmp_path):
    write(tmp_path / "results", REFERENCE)
    (tmp_path / "ref.json").write_text(json.dumps(REFERENCE))
    result, text = compare(tmp_path / "results", str(tmp_path / "ref.json"), 2.0)
    assert result == "identical" and text.startswith("identical: every number equals")


def test_small_accuracy_shifts_and_a_flipped_best_run_are_within_the_spread():
    cur = edited(ref_abc__focal__avg_bc_T1=0.90, best_run__seed=1)
    diffs = differences(REFERENCE, cur)
    assert [(d.key, round(d.points, 6) if d.points is not None else None) for d in diffs] == [
        ("best_run.seed", None), ("ref_abc.focal.avg_bc_T1", 1.25)]
    assert verdict(diffs, 2.0) == "within"
    assert verdict(diffs, 1.0) == "different"
    assert verdict(diffs, None) == "different"  # no spread measured: only identical matches


def test_a_count_that_differs_is_always_different():
    diffs = differences(REFERENCE, edited(ref_abc__focal__n_seeds_T1=1))
    assert verdict(diffs, 50.0) == "different"


def test_cli_reads_the_reference_from_git_head_and_exits_3_when_different(tmp_path):
    env = {**venv_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    write(tmp_path / "results", REFERENCE)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "ref"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    cli = [sys.executable, "-m", "heatedasc.cli", "compare", "--tolerance", "2"]
    ok = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("identical: every number equals results/metrics.json at HEAD")
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.90))
    near = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert near.returncode == 0 and near.stdout.startswith("within the spread of another CPU: 1 number(s) differ")
    assert "ref_abc.focal.avg_bc_T1: 0.9125 -> 0.9 (1.25 pp)" in near.stdout
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.80))
    far = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert far.returncode == 3 and far.stdout.startswith("different: 1 number(s) differ")


def test_a_missing_summary_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="metrics.json not found"):
        compare(tmp_path / "results", "git:HEAD", 1.0)
