"""`heatedasc compare`: identical where the run was pinned, else within the demo's resolution, or different (exit 3)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import venv_env

from heatedasc.compare import compare, differences, identity_expected, resolution, verdict

REFERENCE = {
    "n_runs": 4,
    "ref_abc": {"focal": {"avg_bc_T1": 0.9125, "acc_a_T1": 0.975, "best_avg_bc": 0.9125, "best_T": 1.0,
                          "n_seeds_T1": 2}},
    "best_run": {"correction": "ref_abc", "loss": "focal", "seed": 0, "avg_bc": 0.9375},
}
N_TEST = {"a": 100, "b": 40, "c": 40}  # the demo's evaluation split
PINNED = {"kernels": "avx2", "threads": 1, "variables": {"MKL_CBWR": "AVX2"}}


def write(results, summary):
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(summary))


def write_run(results, *, kernels="avx2", device="cpu", cuda=False, mkl="CNR:AVX2", volatile=True):
    """One training run's metrics and provenance records as the workflow writes them."""
    run = results / "runs" / "ref_abc" / "T1" / "focal" / "seed0"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"acc_a": 0.9, "n_test": N_TEST}))
    cpu = {**PINNED, "kernels": kernels}
    # the stable record holds no speed-only setting; the device is in the volatile one's execution block
    (run / "provenance.json").write_text(json.dumps({"rule": "train", "cpu": cpu, "params": {"train": {"epochs": 1}}}))
    if volatile:
        vol = results.parent / "logs" / "provenance" / "results" / "runs" / "ref_abc" / "T1" / "focal" / "seed0"
        vol.mkdir(parents=True, exist_ok=True)
        (vol / "provenance.json").write_text(json.dumps(
            {"host": {"cuda_available": cuda}, "execution": {"device": device, "eval_batch_size": 256},
             "cpu": {"in_effect": {"mkl": mkl}, "notes": []}}))


def edited(**changes):
    s = json.loads(json.dumps(REFERENCE))
    for dotted, value in changes.items():
        node = s
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return s


def test_resolution_is_one_clip_and_three_standard_errors_of_the_test_set():
    # acc_a over 100 clips, mean of 2 seeds: one clip moves it 0.5 pp
    clip, tol = resolution("x.focal.acc_a_T1", 0.975, N_TEST, seeds=2)
    assert clip == pytest.approx(0.5)
    assert tol == pytest.approx(300 * math.sqrt(2 * 0.975 * 0.025 / 200))  # 3.31 pp
    # avg_bc = (acc_b + acc_c) / 2 over 40 + 40 clips, one run: one clip moves it 1.25 pp
    clip, tol = resolution("best_run.avg_bc", 0.9375, N_TEST, seeds=1)
    assert clip == pytest.approx(1.25)
    assert tol == pytest.approx(300 * math.sqrt(2 * 0.9375 * 0.0625 / 80))  # 11.5 pp
    # a perfect reference accuracy still allows one clip; an unknown test set allows nothing
    assert resolution("best_run.acc_a", 1.0, N_TEST)[1] >= 1.0
    assert resolution("best_run.acc_a", 0.9, None) == (None, None)
    assert resolution("n_runs", 4, N_TEST) == (None, None)


def test_the_same_numbers_are_identical(tmp_path):
    write(tmp_path / "results", REFERENCE)
    write_run(tmp_path / "results")
    (tmp_path / "ref.json").write_text(json.dumps(REFERENCE))
    result, text = compare(tmp_path / "results", str(tmp_path / "ref.json"))
    assert result == "identical" and text.startswith("identical: every number equals")


def test_where_identity_is_not_expected_shifts_within_the_resolution_are_within():
    cur = edited(ref_abc__focal__avg_bc_T1=0.90, best_run__seed=1)
    diffs = differences(REFERENCE, cur, N_TEST)
    assert [(d.key, round(d.points, 6) if d.points is not None else None) for d in diffs] == [
        ("best_run.seed", None), ("ref_abc.focal.avg_bc_T1", 1.25)]
    assert diffs[1].clip_pp == pytest.approx(0.625)  # one clip of b or c, mean of 2 seeds
    for expected in (False, None):
        assert verdict(diffs, expected) == "within"
    far = differences(REFERENCE, edited(ref_abc__focal__avg_bc_T1=0.70), N_TEST)
    assert far[0].points > far[0].tolerance_pp and verdict(far, False) == "different"
    assert verdict(differences(REFERENCE, cur, None), False) == "different"  # unknown test set: nothing is within


def test_where_identity_is_expected_any_difference_is_different():
    diffs = differences(REFERENCE, edited(ref_abc__focal__avg_bc_T1=0.90), N_TEST)
    assert verdict(diffs, True) == "different"
    assert verdict([], True) == "identical"


def test_a_count_that_differs_is_always_different():
    diffs = differences(REFERENCE, edited(ref_abc__focal__n_seeds_T1=1), N_TEST)
    assert verdict(diffs, False) == "different"


@pytest.mark.parametrize("run, expected, reason", [
    ({}, True, "pinned"),
    ({"kernels": "native"}, False, "cpu.kernels 'native'"),
    ({"device": "auto", "cuda": True}, False, "GPU"),
    ({"device": "cuda"}, False, "GPU"),
    ({"mkl": "CNR:AUTO"}, True, "pinned"),  # MKL's documented non-Intel fallback: the pipeline does not use MKL
    ({"volatile": False}, None, "is not here"),
])
def test_identity_is_expected_for_pinned_runs_trained_on_a_cpu(tmp_path, run, expected, reason):
    write_run(tmp_path / "results", **run)
    got, why = identity_expected(tmp_path / "results")
    assert got is expected and reason in why


def test_report_names_each_numbers_clips_and_tolerance(tmp_path):
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.90))
    write_run(tmp_path / "results", kernels="native")
    (tmp_path / "ref.json").write_text(json.dumps(REFERENCE))
    result, text = compare(tmp_path / "results", str(tmp_path / "ref.json"))
    assert result == "within" and text.startswith("within the demo's resolution: 1 number(s) differ")
    assert "ref_abc.focal.avg_bc_T1: 0.9125 -> 0.9 (1.25 pp = 2.0 clip(s) of 0.62 pp; tolerance 9.48 pp)" in text
    assert "cpu.kernels 'native'" in text
    write_run(tmp_path / "results")  # pinned on an Intel CPU: the same shift is different
    result, text = compare(tmp_path / "results", str(tmp_path / "ref.json"))
    assert result == "different" and "identity was expected" in text and "git diff dvc.lock" in text


def test_cli_reads_the_reference_from_git_head_and_exits_3_when_different(tmp_path):
    env = {**venv_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    write(tmp_path / "results", REFERENCE)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "ref"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    write_run(tmp_path / "results", kernels="native")
    cli = [sys.executable, "-m", "heatedasc.cli", "compare"]
    ok = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("identical: every number equals results/metrics.json at HEAD")
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.90))
    near = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert near.returncode == 0 and near.stdout.startswith("within the demo's resolution: 1 number(s) differ")
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.70))
    far = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert far.returncode == 3 and far.stdout.startswith("different: 1 number(s) differ")
    write(tmp_path / "results", edited(ref_abc__focal__avg_bc_T1=0.90))
    write_run(tmp_path / "results")  # pinned: identity expected
    pinned = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert pinned.returncode == 3 and "identity was expected" in pinned.stdout


def test_a_missing_summary_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="metrics.json not found"):
        compare(tmp_path / "results", "git:HEAD")
