"""The significance and confusion artefacts' functions called directly, on tiny hand-made inputs, against
numbers computed here (closed forms, Student-t and normal quantiles from scipy, a bootstrap written out in plain
loops). tests/test_report.py renders them through a module-scoped fixture, which mutation testing credits to its
first test only; these tests call each function in their own body so that every mutant meets them."""

import contextlib
import json
import math
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from heatedasc.report import REGISTRY, confusion, significance
from heatedasc.report.context import RenderContext
from heatedasc.report.runs import discover_runs, load_runs, select_cell
from heatedasc.tau import SCENES

# A tiny test set in TAU's naming: four recording locations, two segments each; device b recorded only in Lyon,
# so a resample that draws neither Lyon location holds no b clip (a NaN replicate of Avg.BC).
LOCATIONS = {"lyon-1": "abc", "lyon-2": "abc", "paris-1": "ac", "paris-2": "ac"}
CLIPS = [(f"audio/park-{loc}-{seg}-{d}.wav", d, loc) for loc, devs in LOCATIONS.items() for seg in range(2) for d in devs]
NAMES = np.array([c[0] for c in CLIPS])
DEVS = np.array([c[1] for c in CLIPS])
UNITS = np.array([c[2] for c in CLIPS])  # the recording location: `identifier` of the file name
N_CLIPS = {d: int((DEVS == d).sum()) for d in "abc"}  # a: 8, b: 4, c: 8 (accuracies exact in binary)
T90, Z90 = 2.919985580355516, 1.6448536269514722  # t_{0.95, 2} and z_{0.95}: the 90% two-sided quantiles


def outcome(hits: tuple[int, int, int], key: int) -> np.ndarray:
    """Per clip of CLIPS: right or wrong, `hits` right clips per device (which ones: drawn from `key`)."""
    rng = np.random.default_rng(key)
    correct = np.zeros(len(CLIPS), bool)
    for d, h in zip("abc", hits):
        idx = np.flatnonzero(DEVS == d)
        correct[rng.permutation(idx)[:h]] = True
    return correct


def write_tiny_run(root: Path, correction, t, loss, seed, hits, *, predictions=True, drop=None) -> tuple[Path, np.ndarray]:
    """A run folder with a metrics.json whose accuracies are those of its predictions.npz (logits whose argmax
    hits the label on the chosen clips; odd seeds list the clips in reverse order). `drop`: a clip left out."""
    correct = outcome(hits, key=zlib.crc32(f"{correction}/{t}/{loss}/{seed}".encode()))
    keep = np.array([n != drop for n in NAMES])
    run = root / "runs" / correction / f"T{t}" / loss / f"seed{seed}"
    run.mkdir(parents=True)
    acc = {d: float(correct[keep & (DEVS == d)].mean()) for d in "abc"}
    metrics = {"correction": correction, "temperature": float(t), "loss": loss, "seed": seed,
               **{f"acc_{d}": acc[d] for d in "abc"}, "avg_bc": (acc["b"] + acc["c"]) / 2, "params_trainable": 1,
               "params_keras": 1, "best_epoch": 1, "selection": "holdout", "selection_note": "The epoch was chosen on a holdout."}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        labels = np.arange(len(CLIPS)) % len(SCENES)
        logits = np.zeros((len(CLIPS), len(SCENES)), np.float32)
        logits[np.arange(len(CLIPS)), np.where(correct, labels, (labels + 1) % len(SCENES))] = 1.0
        order = np.flatnonzero(keep)[::-1 if seed % 2 else 1]
        np.savez(run / "predictions.npz", logits=logits[order], labels=labels[order], devices=DEVS[order],
                 filenames=NAMES[order])
    return run, correct


# (correction, T, loss) -> per seed: hits (a, b, c), and whether predictions.npz exists
GRID = {
    ("ref_abc", 10, "focal"): [(6, 3, 6), (7, 3, 7), (6, 4, 6), ((5, 2, 5), False)],  # Avg.BC 75, 81.25, 87.5 (+ seed 3)
    ("ref_abc", 1, "focal"): [(4, 2, 4), (5, 2, 4), (4, 1, 5)],  # Avg.BC 50, 50, 43.75; Dev.A 50, 62.5, 50
    ("ref_abc", 1, "ce"): [(5, 3, 5), ((5, 2, 6), False), (6, 3, 6)],  # Avg.BC 68.75, 62.5, 75
    ("none", 1, "focal"): [(3, 1, 2), (4, 2, 3)],  # Dev.A 37.5, 50
    ("ref_bc", 1, "focal"): [(4, 2, 4), (4, 2, 4), ((4, 2, 4), False)],
}


def make_runs(root: Path) -> tuple[pd.DataFrame, dict]:
    """The runs of GRID under root/runs/, and each run's per-clip outcomes {(correction, T, loss, seed): correct}."""
    correct = {}
    for (c, t, loss), seeds in GRID.items():
        for seed, spec in enumerate(seeds):
            hits, preds = spec if isinstance(spec[1], bool) else (spec, True)
            correct[(c, t, loss, seed)] = write_tiny_run(root, c, t, loss, seed, hits, predictions=preds)[1]
    return load_runs(discover_runs(root)), correct


def reference_bootstrap(diff, devices, units, weights, *, resamples, seed) -> np.ndarray:
    """The location bootstrap in plain loops: each replicate draws K of the K locations with replacement (numpy's
    multinomial, as many times as drawn) and sums weight · (mean of diff over the drawn clips of the device); NaN
    where a device has no drawn clip."""
    names = sorted(set(units))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(resamples):
        times = dict(zip(names, rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)))))
        value = 0.0
        for d, w in weights.items():
            num = sum(times[u] * x for x, dv, u in zip(diff, devices, units) if dv == d)
            den = sum(times[u] for dv, u in zip(devices, units) if dv == d)
            value = value + w * num / den if den else math.nan
        reps.append(value)
    return np.array(reps)


def seed_mean_diff(correct: dict, a_cell, b_cell, seeds) -> np.ndarray:
    """Per clip of CLIPS, in percentage points: A − B correctness averaged over `seeds`."""
    return np.mean([correct[(*a_cell, s)].astype(float) - correct[(*b_cell, s)].astype(float) for s in seeds], axis=0) * 100


@contextlib.contextmanager
def no_warnings():
    """Any warning (numpy's RuntimeWarnings: 0/0, sd of one value) is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- quantiles, intervals, verdicts ---------------------------------------------------------------------------

@pytest.mark.parametrize("confidence, z", [(0.95, 1.959963984540054), (0.9, 1.6448536269514722),
                                           (0.99, 2.5758293035489004), (1 - 0.05 / 3, 2.3939797998185104)])
def test_z_quantile_is_the_two_sided_normal_quantile(confidence, z):
    assert significance.z_quantile(confidence) == pytest.approx(z, abs=1e-12)
    assert significance.z_quantile(confidence) == pytest.approx(stats.norm.ppf(1 - (1 - confidence) / 2), abs=1e-12)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99, 1 - 0.05 / 3])
def test_the_quantiles_are_scipy_stats_values_bit_for_bit(confidence):
    """They come from scipy.special, so the report job never imports scipy.stats: the very same floats."""
    assert significance.z_quantile(confidence) == stats.norm.ppf(0.5 + confidence / 2)
    for df in (1, 2, 4, 9, 30, 1000):
        assert significance.t_quantile(confidence, df) == stats.t.ppf(0.5 + confidence / 2, df), df


def test_combined_interval_adds_the_half_widths_in_variance():
    # mean 2, seed half-width 3, se_test 2 at 90%: half = √(3² + (1.6449 · 2)²)
    low, high = significance.combined_interval(2.0, 3.0, 2.0, confidence=0.9)
    half = math.sqrt(9.0 + (Z90 * 2.0) ** 2)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-12)
    assert significance.combined_interval(-1.0, 4.0, 0.0, confidence=0.95) == pytest.approx((-5.0, 3.0), abs=1e-12)
    assert significance.combined_interval(1.0, 0.0, 1.0, confidence=0.95) == pytest.approx(
        (1.0 - 1.959963984540054, 1.0 + 1.959963984540054), abs=1e-12)


@pytest.mark.parametrize("low, high, verdict", [
    (0.5, 2.0, "A > B: the 95% interval (seeds) excludes 0"),
    (1e-12, 2.0, "A > B: the 95% interval (seeds) excludes 0"),
    (0.0, 2.0, "not significant: the 95% interval (seeds) includes 0"),  # touching 0 is not excluding it
    (-1.0, 0.5, "not significant: the 95% interval (seeds) includes 0"),
    (-1.0, 0.0, "not significant: the 95% interval (seeds) includes 0"),
    (-2.0, -1e-12, "A < B: the 95% interval (seeds) excludes 0"),
    (-2.0, -0.5, "A < B: the 95% interval (seeds) excludes 0"),
])
def test_verdict_excludes_zero_only_strictly(low, high, verdict):
    assert significance._verdict(low, high, "95%", "seeds") == verdict


def test_describe_names_a_cell_by_its_label_or_its_own_name():
    side = {"correction": "ref_abc", "temperature": 10, "loss": "focal"}
    assert significance._describe(side, {"ref_abc": "Ref.ABC"}) == "Ref.ABC T=10 focal"
    assert significance._describe({**side, "temperature": 2.5}, {}) == "ref_abc T=2.5 focal"
    assert significance._describe({"correction": "none", "temperature": 1.0, "loss": "ce"}, {"ref_abc": "Ref.ABC"}) \
        == "none T=1 ce"


def test_paired_difference_means_are_over_the_paired_seeds_only():
    a = pd.Series([70.0, 70.1, 70.05, 99.0], index=[0, 1, 2, 7])  # seed 7 has no partner
    b = pd.Series([60.0, 60.0, 60.0, 10.0], index=[0, 1, 2, 9])
    res = significance.paired_difference(a, b, confidence=0.95)
    assert res["n_pairs"] == 3 and res["seeds"] == "0 1 2"
    assert res["mean_a"] == pytest.approx(70.05) and res["mean_b"] == pytest.approx(60.0)
    # differences 10, 10.1, 10.05: sd 0.05, half-width t_{0.975,2} · 0.05/√3 = 0.124: small, but a spread
    assert res["sd_diff"] == pytest.approx(0.05)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((10.05 - half, 10.05 + half))
    assert res["verdict"] == "A > B: the 95% interval (seeds) excludes 0"
    none = significance.paired_difference(pd.Series([1.0], index=[0]), pd.Series([2.0], index=[1]))
    assert none["n_pairs"] == 0 and none["seeds"] == ""
    assert all(math.isnan(none[k]) for k in ("mean_a", "mean_b", "mean_diff", "sd_diff"))


# --- the location bootstrap -------------------------------------------------------------------------------------

def test_location_bootstrap_equals_the_bootstrap_written_out_here():
    """Replicate for replicate (the same seeded draws), with a device missing from the last location, a resample
    count that is no multiple of the block size, and replicates without any b clip (NaN, silently)."""
    rng = np.random.default_rng(3)
    diff = rng.choice([-100.0, 0.0, 50.0, 100.0], size=len(CLIPS))
    weights = {"b": 0.5, "c": 0.5}
    with no_warnings():
        got = significance.location_bootstrap(diff, DEVS, UNITS, weights, resamples=301, seed=4)
    want = reference_bootstrap(diff, DEVS, UNITS, weights, resamples=301, seed=4)
    assert got.dtype == np.float64 and got.shape == (301,)
    assert 0 < np.isnan(want).sum() < 301  # some resamples hold no b clip
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    # device a is everywhere: no NaN, and the default resample count and seed
    got_a = significance.location_bootstrap(diff, DEVS, UNITS, {"a": 1.0})
    want_a = reference_bootstrap(diff, DEVS, UNITS, {"a": 1.0}, resamples=2000, seed=0)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-12, atol=1e-12)


def test_location_bootstrap_of_no_clips_is_nan_and_of_one_location_is_its_mean():
    empty = significance.location_bootstrap(np.array([]), np.array([]), np.array([]), {"a": 1.0}, resamples=7)
    assert empty.dtype == np.float64 and empty.shape == (7,) and np.isnan(empty).all()
    # one location: every resample draws it, so every replicate is the weighted device mean, never NaN
    diff = np.array([100.0, 0.0, 0.0, -100.0, 100.0])
    devices = np.array(["b", "b", "c", "c", "c"])
    one = significance.location_bootstrap(diff, devices, np.full(5, "lyon-1"), {"b": 0.5, "c": 0.5}, resamples=9)
    assert one == pytest.approx(np.full(9, 0.5 * 50.0 + 0.5 * 0.0))


# --- per-clip outcomes and the test-set sampling error ----------------------------------------------------------

def test_clip_outcomes_are_the_runs_clips_checked_against_its_metrics(tmp_path):
    run, correct = write_tiny_run(tmp_path, "ref_abc", 1, "focal", 1, (3, 1, 0))
    row = pd.Series({"run_dir": str(run), "acc_a": 3 / 8, "acc_b": 0.25, "acc_c": 0.0})
    out = significance._clip_outcomes(row, {"b": 0.5, "c": 0.5})
    assert list(out.columns) == ["device", "correct"] and out.index.name == "filename"
    assert sorted(out.index) == sorted(NAMES)  # odd seeds list their clips in reverse: the index is by name
    assert out.loc[NAMES, "correct"].tolist() == correct.tolist() and out.loc[NAMES, "device"].tolist() == DEVS.tolist()
    # a difference of exactly ACC_TOLERANCE is accepted; one just above it is not
    at = row.copy()
    at["acc_c"] = 1e-9
    assert significance._clip_outcomes(at, {"c": 1.0}) is not None
    above = row.copy()
    above["acc_c"] = 1.0000000000000003e-09  # the float after 1e-9
    assert above["acc_c"] == np.nextafter(1e-9, 1.0)
    with pytest.raises(ValueError, match=re.escape(
            f"{run}/predictions.npz gives device c an accuracy of 0.0, but its metrics.json says acc_c = "
            "1.0000000000000003e-09: the two files are not of one run")):
        significance._clip_outcomes(above, {"c": 1.0})
    # only the metric's devices are checked
    wrong_a = row.copy()
    wrong_a["acc_a"] = 0.9
    assert significance._clip_outcomes(wrong_a, {"b": 0.5, "c": 0.5}) is not None
    with pytest.raises(ValueError, match=re.escape("gives device a an accuracy of 0.375, but its metrics.json says "
                                                   "acc_a = 0.9: the two files are not of one run")):
        significance._clip_outcomes(wrong_a, {"a": 1.0})
    bare, _ = write_tiny_run(tmp_path, "none", 1, "focal", 0, (1, 1, 1), predictions=False)
    assert significance._clip_outcomes(pd.Series({"run_dir": str(bare), "acc_a": 0.0}), {"a": 1.0}) is None


def test_test_set_sampling_equals_the_written_out_bootstrap_of_the_seed_mean_differences(tmp_path):
    runs, correct = make_runs(tmp_path)
    hot, cold = ("ref_abc", 10, "focal"), ("ref_abc", 1, "focal")
    cell_a, cell_b = select_cell(runs, correction="ref_abc", temperature=10, loss="focal"), \
        select_cell(runs, correction="ref_abc", temperature=1, loss="focal")
    with no_warnings():
        got = significance.test_set_sampling(cell_a, cell_b, "Avg.BC", seeds=[0, 1, 2], resamples=301, seed=7)
    reps = reference_bootstrap(seed_mean_diff(correct, hot, cold, [0, 1, 2]), DEVS, UNITS, {"b": 0.5, "c": 0.5},
                               resamples=301, seed=7)
    kept = reps[~np.isnan(reps)]
    assert 250 < len(kept) < 301
    assert got == {"se_test": pytest.approx(np.std(kept, ddof=1), rel=1e-9), "n_locations": 4,
                   "n_resamples": len(kept), "missing": []}
    # Dev.A over seeds 0 and 2 only (seed 1 not asked for), default resamples and seed
    dev_a = significance.test_set_sampling(cell_a, cell_b, "Dev.A", seeds=[2, 0])
    reps_a = reference_bootstrap(seed_mean_diff(correct, hot, cold, [0, 2]), DEVS, UNITS, {"a": 1.0},
                                 resamples=2000, seed=0)
    assert dev_a == {"se_test": pytest.approx(np.std(reps_a, ddof=1), rel=1e-9), "n_locations": 4,
                     "n_resamples": 2000, "missing": []}


def test_test_set_sampling_of_one_or_two_resamples(tmp_path):
    """se_test needs two replicates (sd with ddof=1); one gives NaN without a numpy warning."""
    runs, correct = make_runs(tmp_path)
    cell_a = select_cell(runs, correction="ref_abc", temperature=10, loss="focal")
    cell_b = select_cell(runs, correction="ref_abc", temperature=1, loss="focal")
    diff = seed_mean_diff(correct, ("ref_abc", 10, "focal"), ("ref_abc", 1, "focal"), [0, 1])
    with no_warnings():
        two = significance.test_set_sampling(cell_a, cell_b, "Dev.A", seeds=[0, 1], resamples=2, seed=5)
        one = significance.test_set_sampling(cell_a, cell_b, "Dev.A", seeds=[0, 1], resamples=1, seed=5)
    reps = reference_bootstrap(diff, DEVS, UNITS, {"a": 1.0}, resamples=2, seed=5)
    assert reps[0] != reps[1]
    assert two["se_test"] == pytest.approx(abs(reps[0] - reps[1]) / math.sqrt(2), rel=1e-9)
    assert two["n_resamples"] == 2 and two["n_locations"] == 4
    assert math.isnan(one["se_test"]) and one["n_resamples"] == 1 and one["n_locations"] == 4


def test_test_set_sampling_names_every_missing_predictions_file(tmp_path):
    runs, _ = make_runs(tmp_path)
    ce = select_cell(runs, correction="ref_abc", temperature=1, loss="ce")  # seed 1 has no predictions.npz
    ref_bc = select_cell(runs, correction="ref_bc", temperature=1, loss="focal")  # seed 2 has none
    got = significance.test_set_sampling(ce, ref_bc, "Avg.BC", seeds=[0, 1, 2], resamples=50)
    assert math.isnan(got["se_test"]) and got["n_locations"] == 0 and got["n_resamples"] == 0
    assert got["missing"] == [str(tmp_path / "runs" / "ref_abc" / "T1" / "ce" / "seed1" / "predictions.npz"),
                              str(tmp_path / "runs" / "ref_bc" / "T1" / "focal" / "seed2" / "predictions.npz")]
    both = significance.test_set_sampling(ce, ce, "Dev.A", seeds=[1], resamples=50)
    assert both["missing"] == [str(tmp_path / "runs" / "ref_abc" / "T1" / "ce" / "seed1" / "predictions.npz")] * 2
    assert significance.test_set_sampling(ce, ce, "Dev.A", seeds=[], resamples=50) == {
        "se_test": pytest.approx(math.nan, nan_ok=True), "n_locations": 0, "n_resamples": 0, "missing": []}


def test_test_set_sampling_refuses_runs_of_different_test_clips(tmp_path):
    full = {s: write_tiny_run(tmp_path, "ref_abc", 1, "focal", s, (4, 2, 4))[0] for s in (0, 1)}
    short = {s: write_tiny_run(tmp_path, "none", 1, "focal", s, (3, 2, 3), drop=NAMES[-1] if s == 0 else None)[0]
             for s in (0, 1)}
    later = {s: write_tiny_run(tmp_path, "ref_bc", 1, "focal", s, (3, 2, 3), drop=NAMES[0] if s == 1 else None)[0]
             for s in (0, 1)}
    runs = load_runs(discover_runs(tmp_path))
    cell = {c: select_cell(runs, correction=c, temperature=1, loss="focal") for c in ("ref_abc", "none", "ref_bc")}
    message = "{} and {}: the runs' predictions.npz hold different test clips: not one test set"
    # seed 0: A lacks a clip that B has
    with pytest.raises(ValueError, match=re.escape(message.format(short[0], full[0]))):
        significance.test_set_sampling(cell["none"], cell["ref_abc"], "Dev.A", seeds=[0, 1], resamples=10)
    # seed 1 of A and B agree with each other, but not with seed 0's clips (the message names the cells' first runs)
    later_b = write_tiny_run(tmp_path / "b", "ref_bc", 1, "ce", 1, (3, 2, 3), drop=NAMES[0])[0]
    runs_b = load_runs(discover_runs(tmp_path / "b"))
    cell_b = pd.concat([cell["ref_abc"][cell["ref_abc"]["seed"] == 0],
                        select_cell(runs_b, correction="ref_bc", temperature=1, loss="ce")])
    assert list(cell_b["run_dir"]) == [str(full[0]), str(later_b)]
    with pytest.raises(ValueError, match=re.escape(message.format(later[0], full[0]))):
        significance.test_set_sampling(cell["ref_bc"], cell_b, "Dev.A", seeds=[0, 1], resamples=10)


# --- the table, its family verdicts, its document --------------------------------------------------------------

COLUMNS = ["comparison", "metric", "a", "b", "n_a", "n_b", "n_pairs", "seeds", "mean_a", "mean_b", "mean_diff", "sd_diff",
           "t_crit", "ci_low", "ci_high", "se_test", "n_locations", "n_resamples", "test_low", "test_high", "total_low",
           "total_high", "verdict", "claim", "family_k", "family_confidence", "family_low", "family_high",
           "family_verdict"]
CELL = {"hot": {"correction": "ref_abc", "temperature": 10, "loss": "focal"},
        "cold": {"correction": "ref_abc", "temperature": 1, "loss": "focal"},
        "ce": {"correction": "ref_abc", "temperature": 1, "loss": "ce"},
        "none": {"correction": "none", "temperature": 1, "loss": "focal"},
        "ghost": {"correction": "ref_bc", "temperature": 10, "loss": "focal"}}
COMPARISONS = [
    {"name": "hot", "metric": "avg_bc", "a": CELL["hot"], "b": CELL["cold"], "claim": "Tables 2/3: 70.1 vs 67.6"},
    {"name": "loss", "metric": "Avg.BC", "a": CELL["cold"], "b": CELL["ce"], "claim": "Table 2: 67.6 vs 67.3"},
    {"name": "few", "metric": "Dev.A", "a": CELL["none"], "b": CELL["cold"]},
    {"name": "ghost", "metric": "Dev.B", "a": CELL["ghost"], "b": CELL["cold"], "claim": ""},
]


def seed_interval(diffs, t):
    """(mean, sd, half-width) of the per-seed differences, by hand."""
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean, sd, t * sd / math.sqrt(len(diffs))


def test_significance_table_equals_a_hand_computation(tmp_path):
    runs, correct = make_runs(tmp_path)
    with no_warnings():
        table = significance.significance_table(runs, COMPARISONS, confidence=0.9, resamples=301, seed=7,
                                                labels={"ref_abc": "Ref.ABC"})
    assert list(table.columns) == COLUMNS and list(table["comparison"]) == ["hot", "loss", "few", "ghost"]
    rows = table.set_index("comparison")

    hot = rows.loc["hot"]  # Avg.BC per seed: A 75, 81.25, 87.5 (seed 3 unpaired); B 50, 50, 43.75
    mean, sd, half = seed_interval([25.0, 31.25, 43.75], T90)
    reps = reference_bootstrap(seed_mean_diff(correct, ("ref_abc", 10, "focal"), ("ref_abc", 1, "focal"), [0, 1, 2]),
                               DEVS, UNITS, {"b": 0.5, "c": 0.5}, resamples=301, seed=7)
    se = np.std(reps[~np.isnan(reps)], ddof=1)
    both = math.sqrt(half ** 2 + (Z90 * se) ** 2)
    assert hot[["metric", "a", "b", "n_a", "n_b", "n_pairs", "seeds", "claim"]].tolist() == [
        "avg_bc", "Ref.ABC T=10 focal", "Ref.ABC T=1 focal", 4, 3, 3, "0 1 2", "Tables 2/3: 70.1 vs 67.6"]
    assert hot[["mean_a", "mean_b", "mean_diff", "sd_diff", "t_crit", "ci_low", "ci_high"]].tolist() == pytest.approx(
        [81.25, 143.75 / 3, mean, sd, T90, mean - half, mean + half], rel=1e-9)
    assert hot["se_test"] == pytest.approx(se, rel=1e-9)
    assert (hot["n_locations"], hot["n_resamples"]) == (4, int((~np.isnan(reps)).sum()))
    assert hot[["test_low", "test_high", "total_low", "total_high"]].tolist() == pytest.approx(
        [mean - Z90 * se, mean + Z90 * se, mean - both, mean + both], rel=1e-9)
    assert mean - both > 0 and hot["verdict"] == "A > B: the 90% interval (seeds and test clips) excludes 0"

    loss = rows.loc["loss"]  # ce seed 1 has no predictions.npz: the seed interval alone; Avg.BC ce 68.75, 62.5, 75
    mean, sd, half = seed_interval([-18.75, -12.5, -31.25], T90)
    assert loss[["a", "b", "n_a", "n_b", "n_pairs", "n_locations", "n_resamples"]].tolist() == [
        "Ref.ABC T=1 focal", "Ref.ABC T=1 ce", 3, 3, 3, 0, 0]
    assert math.isnan(loss["se_test"]) and math.isnan(loss["test_low"]) and math.isnan(loss["test_high"])
    assert loss[["mean_diff", "ci_low", "ci_high", "total_low", "total_high"]].tolist() == pytest.approx(
        [mean, mean - half, mean + half, mean - half, mean + half], rel=1e-9)
    assert loss["verdict"] == ("A < B: the 90% interval (seeds) excludes 0; seed spread only: no predictions.npz, so "
                               "test-set sampling is not included")

    few = rows.loc["few"]  # two pairs: a test-set interval, no seed interval, no verdict; Dev.A none 37.5, 50
    reps = reference_bootstrap(seed_mean_diff(correct, ("none", 1, "focal"), ("ref_abc", 1, "focal"), [0, 1]),
                               DEVS, UNITS, {"a": 1.0}, resamples=301, seed=7)
    se = np.std(reps, ddof=1)
    assert few[["a", "n_a", "n_b", "n_pairs", "seeds", "claim", "n_locations", "n_resamples"]].tolist() == [
        "none T=1 focal", 2, 3, 2, "0 1", "", 4, 301]
    assert few[["mean_a", "mean_b", "mean_diff", "sd_diff", "se_test", "test_low", "test_high"]].tolist() == pytest.approx(
        [43.75, 56.25, -12.5, 0.0, se, -12.5 - Z90 * se, -12.5 + Z90 * se], rel=1e-9, abs=1e-12)
    assert all(math.isnan(few[k]) for k in ("t_crit", "ci_low", "ci_high", "total_low", "total_high"))
    assert few["verdict"] == "not resolvable (n < 3 pairs)"

    ghost = rows.loc["ghost"]  # cell A never ran
    assert ghost[["a", "n_a", "n_b", "n_pairs", "seeds", "n_locations", "n_resamples", "verdict", "claim"]].tolist() == [
        "ref_bc T=10 focal", 0, 3, 0, "", 0, 0, "not resolvable (n < 3 pairs)", ""]
    assert all(math.isnan(ghost[k]) for k in ("mean_a", "mean_diff", "se_test", "test_low", "test_high", "total_low"))

    # the family: the two rows with an interval, each at 1 − 0.1/2 = 95%
    assert table["family_k"].tolist() == [2] * 4 and table["family_confidence"].tolist() == pytest.approx([0.95] * 4)
    hot_f = seed_interval([25.0, 31.25, 43.75], 4.302652729911275)[2]
    hot_f = math.hypot(hot_f, 1.959963984540054 * rows.loc["hot", "se_test"])
    assert (rows.loc["hot", "family_low"], rows.loc["hot", "family_high"]) == pytest.approx(
        (rows.loc["hot", "mean_diff"] - hot_f, rows.loc["hot", "mean_diff"] + hot_f), rel=1e-9)
    loss_f = seed_interval([-18.75, -12.5, -31.25], 4.302652729911275)[2]  # no test-set error: the seeds alone
    assert (rows.loc["loss", "family_low"], rows.loc["loss", "family_high"]) == pytest.approx(
        (rows.loc["loss", "mean_diff"] - loss_f, rows.loc["loss", "mean_diff"] + loss_f), rel=1e-9)
    assert list(rows["family_verdict"]) == [  # "loss" is significant alone, not in the family
        "A > B: the 95% interval (Bonferroni, k = 2) excludes 0",
        "not significant: the 95% interval (Bonferroni, k = 2) includes 0", "–", "–"]


def test_significance_table_defaults_and_its_errors(tmp_path):
    runs, correct = make_runs(tmp_path)
    # no `claim`, no labels, default confidence (95%), resamples (2000) and seed (0)
    table = significance.significance_table(runs, [{k: v for k, v in COMPARISONS[0].items() if k != "claim"}])
    row = table.iloc[0]
    reps = reference_bootstrap(seed_mean_diff(correct, ("ref_abc", 10, "focal"), ("ref_abc", 1, "focal"), [0, 1, 2]),
                               DEVS, UNITS, {"b": 0.5, "c": 0.5}, resamples=2000, seed=0)
    kept = reps[~np.isnan(reps)]
    assert row["claim"] == "" and row["a"] == "ref_abc T=10 focal" and row["t_crit"] == pytest.approx(4.302652729911275)
    assert row["n_resamples"] == len(kept) and row["se_test"] == pytest.approx(np.std(kept, ddof=1), rel=1e-9)
    assert row["family_k"] == 1 and row["family_confidence"] == pytest.approx(0.95)
    assert row["verdict"] == "A > B: the 95% interval (seeds and test clips) excludes 0"
    assert row["family_verdict"] == "A > B: the 95% interval (Bonferroni, k = 1) excludes 0"
    # k = 1: the family interval is the interval itself
    assert (row["family_low"], row["family_high"]) == pytest.approx((row["total_low"], row["total_high"]), rel=1e-9)
    # no row with an interval: the interval columns hold NaN (numbers), as in any other table
    unresolved = significance.significance_table(runs, COMPARISONS[2:], resamples=20)
    assert list(unresolved["verdict"]) == ["not resolvable (n < 3 pairs)"] * 2 and list(unresolved["family_k"]) == [0, 0]
    assert all(math.isnan(v) for v in unresolved[["total_low", "total_high", "family_low", "family_high"]].to_numpy().ravel())
    empty = significance.significance_table(runs, [])
    assert empty.empty and list(empty.columns) == COLUMNS
    bad = {**COMPARISONS[0], "name": "typo", "metric": "Avg.AB"}
    with pytest.raises(ValueError, match=re.escape(
            "report.comparisons 'typo': unknown metric 'Avg.AB' (one of Dev.A, Dev.B, Dev.C, Avg.BC, acc_a, acc_b, "
            "acc_c, avg_bc)")):
        significance.significance_table(runs, [COMPARISONS[2], bad])


def family_input(rows) -> pd.DataFrame:
    """A significance table as family_verdicts reads it (only the columns it uses)."""
    return pd.DataFrame(rows, columns=["comparison", "mean_diff", "sd_diff", "n_pairs", "se_test", "total_low"])


def test_family_verdicts_are_bonferroni_by_hand():
    table = family_input([
        ("up", 5.0, 1.0, 3, 0.5, 1.0),
        ("down", -6.0, 1.0, 4, np.nan, -9.0),  # no test-set error: the seed interval alone
        ("flat", 0.5, 1.0, 3, 0.2, -1.0),
        ("unjudged", 9.0, 1.0, 2, 0.1, np.nan),
    ])
    before = table.copy()
    out = significance.family_verdicts(table, confidence=0.9)
    pd.testing.assert_frame_equal(table, before)  # the input is left as it was
    assert list(out.columns) == list(table.columns) + ["family_k", "family_confidence", "family_low", "family_high",
                                                       "family_verdict"]
    level = 1 - 0.1 / 3
    assert (out["family_k"] == 3).all() and out["family_confidence"].tolist() == pytest.approx([level] * 4, rel=1e-15)
    q = 1 - 0.1 / 6  # the two-sided quantile of the family level
    halves = {"up": math.hypot(stats.t.ppf(q, 2) / math.sqrt(3), stats.norm.ppf(q) * 0.5),
              "down": stats.t.ppf(q, 3) / 2.0,
              "flat": math.hypot(stats.t.ppf(q, 2) / math.sqrt(3), stats.norm.ppf(q) * 0.2)}
    rows = out.set_index("comparison")
    for name, half in halves.items():
        m = rows.loc[name, "mean_diff"]
        assert (rows.loc[name, "family_low"], rows.loc[name, "family_high"]) == pytest.approx((m - half, m + half),
                                                                                              rel=1e-9), name
    assert rows["family_verdict"].tolist() == [
        "A > B: the 96.67% interval (Bonferroni, k = 3) excludes 0",
        "A < B: the 96.67% interval (Bonferroni, k = 3) excludes 0",
        "not significant: the 96.67% interval (Bonferroni, k = 3) includes 0", "–"]
    assert math.isnan(rows.loc["unjudged", "family_low"]) and math.isnan(rows.loc["unjudged", "family_high"])


def test_family_verdicts_without_any_interval_have_k_0_and_no_level():
    out = significance.family_verdicts(family_input([("x", 1.0, 1.0, 2, 0.1, np.nan)]), confidence=0.95)
    assert out["family_k"].tolist() == [0] and math.isnan(out["family_confidence"].iloc[0])
    assert out["family_verdict"].tolist() == ["–"] and math.isnan(out["family_low"].iloc[0])
    assert significance.family_verdicts(family_input([]), confidence=0.95)["family_k"].tolist() == []


def expected_notes(confidence: str, level: str, alpha: str, k: int, test_selection: bool) -> tuple[str, str, str]:
    """The notes under the significance table, spelled out (the numbers a reader relies on included)."""
    method = ("Accuracies in %; A − B in percentage points, paired by seed (only seeds that ran in both cells). Seeds: "
              f"mean ± t_(n−1) · sd/√n at {level}, the spread of training (initialisation, order, mixup) on this one test "
              "set; with fewer than 3 pairs there is no interval and no verdict, and a zero spread (the same difference "
              "for every seed) is no evidence. Test clips: the sampling error of the test set itself, from a paired "
              "bootstrap over its recording locations (all clips of a drawn location, every device; the same 2000 "
              "resamples, seed 0, for A, B and every seed; per-device accuracies recomputed on each), as mean ± z · se. "
              "Both: the two half-widths added in variance, √(h_seeds² + h_test²); the verdict is read from it.")
    policy = ("Multiple comparisons: the rows are the paper's claims, tested as one family. A claim counts as reproduced "
              "only if its Bonferroni interval excludes 0: the k rows that have an interval are each judged at level "
              f"1 − (1 − {confidence})/k, so the chance of any false \"excludes 0\" among them is at most {alpha}. The "
              f"{level} verdict beside it is unadjusted, for one comparison read alone."
              + (f" Here k = {k}." if k else " Here no row has an interval (k = 0)."))
    cover = ("Not covered by any interval: other data (another test set of other locations, the real TAU data for a "
             "synthetic run), other code, hardware or software versions.")
    if test_selection:
        cover += (" With train.selection test, each run's epoch was chosen as the best on this same test set, so both A "
                  "and B are optimistic, by amounts the intervals do not measure and that need not cancel in A − B "
                  "(train.selection holdout removes this).")
    return method, policy, cover


def test_significance_notes_are_these_sentences():
    assert significance.significance_notes(0.95, 3, ["holdout", "test"]) == expected_notes("0.95", "95%", "0.05", 3, True)
    assert significance.significance_notes(0.9, 0, ["holdout"]) == expected_notes("0.9", "90%", "0.1", 0, False)
    assert significance.significance_notes(0.99, 1, pd.Series(["holdout", "holdout"])) == expected_notes(
        "0.99", "99%", "0.01", 1, False)


def document_data() -> pd.DataFrame:
    """Two rows of a significance table as read back from its CSV (text columns as strings, empty ones NaN)."""
    nan = np.nan
    return pd.DataFrame([
        {"comparison": "hot", "a": "Ref.ABC T=10 focal", "b": "Ref.ABC T=1 focal", "metric": "Avg.BC", "n_pairs": 3,
         "seeds": "0 1 2", "mean_a": 81.25, "mean_b": 47.916666, "mean_diff": 33.3333, "ci_low": 17.24, "ci_high": 49.43,
         "test_low": -3.46, "test_high": 70.04, "total_low": 0.96, "total_high": 65.71,
         "verdict": "A > B: the 90% interval (seeds and test clips) excludes 0",
         "family_verdict": "not significant: the 95% interval (Bonferroni, k = 2) includes 0",
         "claim": "Tables 2/3: 70.1 vs 67.6", "family_k": 2},
        {"comparison": "ghost", "a": "ref_bc T=10 focal", "b": "Ref.ABC T=1 focal", "metric": "Dev.B", "n_pairs": 0,
         "seeds": nan, "mean_a": nan, "mean_b": nan, "mean_diff": nan, "ci_low": nan, "ci_high": nan, "test_low": nan,
         "test_high": nan, "total_low": nan, "total_high": nan, "verdict": "not resolvable (n < 3 pairs)",
         "family_verdict": nan, "claim": nan, "family_k": 2},
    ])


def document_context(confidence=0.9, caveat="Demo runs: not the paper's data.") -> RenderContext:
    runs = pd.DataFrame({"selection": ["holdout", "test"], "selection_note": [None, "The epoch was chosen by the test set."]})
    return RenderContext(config={"report": {"confidence": confidence, "caveat": caveat}}, registry=REGISTRY, runs=runs)


def test_significance_document_prints_each_cell_rounded_and_blank_where_missing():
    doc = significance.significance_document(document_data(), document_context())
    assert doc.title == "Paired comparisons over seeds and test clips (accuracies in %, differences in percentage points)"
    assert list(doc.frame.columns) == ["comparison", "A", "B", "metric", "pairs (seeds)", "mean A", "mean B", "A − B",
                                       "90% CI: seeds", "90% CI: test clips", "90% CI: both", "verdict",
                                       "family verdict (Bonferroni, k = 2)", "paper's claim"]
    assert doc.frame.values.tolist() == [
        ["hot", "Ref.ABC T=10 focal", "Ref.ABC T=1 focal", "Avg.BC", "3 (0 1 2)", "81.2", "47.9", "+33.3",
         "[+17.2, +49.4]", "[-3.5, +70.0]", "[+1.0, +65.7]", "A > B: the 90% interval (seeds and test clips) excludes 0",
         "not significant: the 95% interval (Bonferroni, k = 2) includes 0", "Tables 2/3: 70.1 vs 67.6"],
        ["ghost", "ref_bc T=10 focal", "Ref.ABC T=1 focal", "Dev.B", "0 (–)", "–", "–", "–", "–", "–", "–",
         "not resolvable (n < 3 pairs)", "–", "–"],
    ]
    assert doc.notes == expected_notes("0.9", "90%", "0.1", 2, True)
    assert doc.caveat == "Demo runs: not the paper's data."
    assert doc.shared == ("Model selection: train.selection=holdout, test (mixed across runs). The paper's `test` "
                          "selection leaks the test set. The epoch was chosen by the test set.",)
    md = doc.markdown()
    assert "| ghost | ref_bc T=10 focal | Ref.ABC T=1 focal | Dev.B | 0 (–) | – | – | – | – | – | – |" in md


def test_significance_document_of_one_row_and_of_none():
    one = document_data().iloc[:1].assign(family_k=1, mean_diff=-0.44)
    doc = significance.significance_document(one, document_context(confidence=0.95, caveat=""))
    assert doc.frame.columns[8:13].tolist() == ["95% CI: seeds", "95% CI: test clips", "95% CI: both", "verdict",
                                                "family verdict (Bonferroni, k = 1)"]
    assert doc.frame.iloc[0]["A − B"] == "-0.4" and doc.caveat == ""
    assert doc.notes[1].endswith("judged at level 1 − (1 − 0.95)/k, so the chance of any false \"excludes 0\" among "
                                 "them is at most 0.05. The 95% verdict beside it is unadjusted, for one comparison "
                                 "read alone. Here k = 1.")
    none = significance.significance_document(document_data().iloc[:0], document_context())
    assert none.frame.empty and none.frame.columns[12] == "family verdict (Bonferroni, k = 0)"
    assert none.notes[1].endswith(" Here no row has an interval (k = 0).")


def test_render_significance_reads_the_comparisons_confidence_and_labels_of_the_config(tmp_path):
    runs, _ = make_runs(tmp_path)
    cfg = {"report": {"confidence": 0.9, "comparisons": COMPARISONS[1:3],
                      "corrections": {"ref_abc": {"label": "Ref.ABC"}, "none": {"label": "NoCorrection"}}}}
    out = significance.render_significance(RenderContext(config=cfg, registry=REGISTRY, runs=runs), {})
    assert list(out) == ["significance"]
    table = out["significance"]
    assert list(table.columns) == COLUMNS and list(table["comparison"]) == ["loss", "few"]
    assert list(table["a"]) == ["Ref.ABC T=1 focal", "NoCorrection T=1 focal"]
    assert table["t_crit"].iloc[0] == pytest.approx(T90) and table["verdict"].iloc[0].startswith(
        "A < B: the 90% interval (seeds) excludes 0")
    assert table["n_resamples"].iloc[1] == 2000  # the fixed resample count


# --- confusion sums -------------------------------------------------------------------------------------------

def confusion_runs(rows) -> pd.DataFrame:
    """A runs table as confusion_sums reads it: (correction, temperature, loss, seed, confusion)."""
    return pd.DataFrame(rows, columns=["correction", "temperature", "loss", "seed", "confusion"])


def test_confusion_sums_add_the_seeds_matrices_per_device():
    m = lambda *v: [list(v[:2]), list(v[2:])]  # noqa: E731  a 2×2 matrix
    runs = confusion_runs([
        ("ref_abc", 10.0, "focal", 2, {"a": m(1, 2, 3, 4), "b": m(0, 1, 1, 0), "c": m(5, 0, 0, 5)}),
        ("ref_abc", 10.0, "focal", 0, {"a": m(10, 20, 30, 40), "b": m(2, 0, 0, 2)}),  # no c matrix
        ("ref_abc", 10.0, "focal", 1, None),  # a run without confusion matrices: counted, adds nothing
        ("ref_abc", 1.0, "focal", 0, {"a": m(9, 9, 9, 9), "b": m(9, 9, 9, 9), "c": m(9, 9, 9, 9)}),
    ])
    specs = [{"name": "hot", "correction": "ref_abc", "temperature": 10, "loss": "focal", "extra": "kept"},
             {"name": "gone", "correction": "none", "temperature": 1, "loss": "focal"}]
    hot, gone = confusion.confusion_sums(runs, specs, 2)
    assert {k: hot[k] for k in ("name", "correction", "temperature", "loss", "extra", "n_seeds", "seeds")} == {
        "name": "hot", "correction": "ref_abc", "temperature": 10, "loss": "focal", "extra": "kept", "n_seeds": 3,
        "seeds": [0, 1, 2]}
    assert list(hot["matrices"]) == ["a", "b", "c"]
    assert hot["matrices"]["a"].tolist() == [[11, 22], [33, 44]] and hot["matrices"]["a"].dtype == np.int64
    assert hot["matrices"]["b"].tolist() == [[2, 1], [1, 2]] and hot["matrices"]["c"].tolist() == [[5, 0], [0, 5]]
    assert gone["n_seeds"] == 0 and gone["seeds"] == [] and gone["matrices"] == {"a": None, "b": None, "c": None}
    assert gone["name"] == "gone"


def test_confusion_sums_refuse_a_matrix_of_the_wrong_size():
    runs = confusion_runs([("none", 1.0, "ce", 0, {"a": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "b": [[1, 0], [0, 1]]})])
    spec = {"name": "NoCorrection_T1", "correction": "none", "temperature": 1, "loss": "ce"}
    with pytest.raises(ValueError, match=re.escape("NoCorrection_T1: device b confusion matrix has shape (2, 2), "
                                                   "expected 3×3")):
        confusion.confusion_sums(runs, [spec], 3)
    with pytest.raises(ValueError, match=re.escape("NoCorrection_T1: device a confusion matrix has shape (3, 3), "
                                                   "expected 2×2")):
        confusion.confusion_sums(runs, [spec], 2)


def test_confusion_frame_is_one_row_per_cell_of_each_present_matrix():
    sums = [{"name": "hot", "correction": "ref_abc", "temperature": 10, "loss": "focal", "n_seeds": 3,
             "matrices": {"a": np.array([[5, 1], [2, 7]]), "b": None, "c": np.array([[0, 3], [4, 0]])}},
            {"name": "gone", "correction": "none", "temperature": 1, "loss": "ce", "n_seeds": 0,
             "matrices": {"a": None, "b": None, "c": None}}]
    frame = confusion.confusion_frame(sums, ["park", "bus"])
    assert list(frame.columns) == ["name", "correction", "temperature", "loss", "n_seeds", "device", "true",
                                   "predicted", "count"]
    assert frame.values.tolist() == [
        ["hot", "ref_abc", 10.0, "focal", 3, "a", "park", "park", 5], ["hot", "ref_abc", 10.0, "focal", 3, "a", "park", "bus", 1],
        ["hot", "ref_abc", 10.0, "focal", 3, "a", "bus", "park", 2], ["hot", "ref_abc", 10.0, "focal", 3, "a", "bus", "bus", 7],
        ["hot", "ref_abc", 10.0, "focal", 3, "c", "park", "park", 0], ["hot", "ref_abc", 10.0, "focal", 3, "c", "park", "bus", 3],
        ["hot", "ref_abc", 10.0, "focal", 3, "c", "bus", "park", 4], ["hot", "ref_abc", 10.0, "focal", 3, "c", "bus", "bus", 0],
    ]
    assert isinstance(frame["temperature"].iloc[0], float) and frame["count"].dtype == np.int64
    empty = confusion.confusion_frame([], ["park", "bus"])
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_render_confusion_sums_the_configured_run_sets_over_the_scene_classes(monkeypatch, tmp_path):
    drawn = {}

    def plot(sums, out_png, *, class_names):
        drawn.update(sums=sums, out_png=out_png, class_names=class_names)

    monkeypatch.setattr(confusion, "plot_confusion", plot)
    k = len(SCENES)
    runs = confusion_runs([("ref_abc", 10.0, "focal", s, {d: (np.eye(k, dtype=int) * (s + 1)).tolist() for d in "abc"})
                           for s in (0, 1)])
    cfg = {"report": {"confusion_runs": [{"name": "Ref.ABC_T10", "correction": "ref_abc", "temperature": 10,
                                          "loss": "focal"}]}}
    out = confusion.render_confusion(RenderContext(config=cfg, registry=REGISTRY, runs=runs),
                                     {"confusion": str(tmp_path / "confusion.png")})
    assert list(out) == ["confusion_csv"]
    assert drawn["out_png"] == str(tmp_path / "confusion.png") and drawn["class_names"] == list(SCENES)
    assert [s["name"] for s in drawn["sums"]] == ["Ref.ABC_T10"] and drawn["sums"][0]["n_seeds"] == 2
    frame = out["confusion_csv"]
    assert len(frame) == 3 * k * k and set(frame["true"]) == set(SCENES)
    diag = frame[frame["true"] == frame["predicted"]]
    assert set(diag["count"]) == {3} and frame["count"].sum() == 3 * 3 * k  # seeds 1 + 2, per device
    assert frame[(frame["device"] == "b") & (frame["true"] == "bus")]["predicted"].tolist() == list(SCENES)
