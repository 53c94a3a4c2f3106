"""The significance artefact, beyond the paper, from the saved per-run outputs (no retraining): the paper's
comparisons (`report.comparisons`) paired over seeds (a t-interval), with the test set's sampling error (a paired
bootstrap over its recording locations), both combined, and a family verdict (Bonferroni) over the comparisons
(tables/significance.csv and its Markdown)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from heatedasc.report.runs import METRICS, correction_labels, load_outcomes, select_cell, selection_note
from heatedasc.report.tables import TableDoc, isnan, text

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext

MIN_PAIRS = 3  # fewer seeds paired than this: no verdict (t_{0.975,1} = 12.7 makes any interval meaningless)

SIGNIFICANCE_TEXT = ("comparison", "metric", "a", "b", "seeds", "verdict", "family_verdict", "claim")
NOT_RESOLVABLE = f"not resolvable (n < {MIN_PAIRS} pairs)"
NO_SPREAD = "not resolvable (sd = 0: the same difference for every seed)"
# Test-set sampling: a paired bootstrap over the test set's recording locations. Fixed here, not parameters, so
# that every significance table is computed alike (as ECE_BINS for the calibration).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CHUNK = 250  # resamples per block (bounds the memory of the count matrix)
# A metric as a weighted sum of per-device accuracies.
DEVICE_WEIGHTS = {"Dev.A": {"a": 1.0}, "Dev.B": {"b": 1.0}, "Dev.C": {"c": 1.0}, "Avg.BC": {"b": 0.5, "c": 0.5}}
ACC_TOLERANCE = 1e-9  # predictions.npz must give the accuracies of metrics.json


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value t_{(1+confidence)/2, df}."""
    # scipy.special's inverse CDF is what scipy.stats.t.ppf computes (t_gen._ppf is stdtrit); importing scipy.stats
    # for it would cost the report job about a second.
    from scipy import special

    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return float(special.stdtrit(df, 0.5 + confidence / 2))


def z_quantile(confidence: float) -> float:
    """Two-sided standard normal critical value z_{(1+confidence)/2}."""
    from scipy import special  # scipy.stats.norm.ppf is ndtri (norm_gen._ppf), without importing scipy.stats

    return float(special.ndtri(0.5 + confidence / 2))


def _describe(side: dict, labels: Mapping[str, str]) -> str:
    return f"{labels.get(side['correction'], side['correction'])} T={float(side['temperature']):g} {side['loss']}"


def _verdict(low: float, high: float, level: str, what: str) -> str:
    if low > 0:
        return f"A > B: the {level} interval ({what}) excludes 0"
    if high < 0:
        return f"A < B: the {level} interval ({what}) excludes 0"
    return f"not significant: the {level} interval ({what}) includes 0"


def paired_difference(a: pd.Series, b: pd.Series, *, confidence: float = 0.95) -> dict:
    """Mean of a − b over the shared index (seeds), its sample sd (ddof=1) and the t-interval. No verdict
    and no interval from fewer than MIN_PAIRS pairs; a zero-width interval (sd = 0) is no evidence either."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    n = len(both)
    diff = both["a"] - both["b"]
    out: dict[str, Any]
    out = {"n_pairs": n, "seeds": " ".join(str(int(s)) for s in sorted(both.index)),
           "mean_a": float(both["a"].mean()) if n else np.nan, "mean_b": float(both["b"].mean()) if n else np.nan,
           "mean_diff": float(diff.mean()) if n else np.nan, "sd_diff": float(diff.std(ddof=1)) if n > 1 else np.nan,
           "t_crit": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if n < MIN_PAIRS:
        out["verdict"] = NOT_RESOLVABLE
        return out
    t = t_quantile(confidence, n - 1)
    half = t * out["sd_diff"] / math.sqrt(n)
    out.update(t_crit=t, ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
    if half < 1e-9:  # identical differences up to float rounding: the seeds show no spread to test against
        out["verdict"] = NO_SPREAD
    else:
        out["verdict"] = _verdict(out["ci_low"], out["ci_high"], f"{confidence * 100:g}%", "seeds")
    return out


def location_bootstrap(diff: np.ndarray, devices: np.ndarray, units: np.ndarray, weights: Mapping[str, float], *,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Bootstrap replicates of Σ_d weights[d] · (mean of `diff` over the clips of device d), resampling the
    `units` (recording locations) with replacement: every clip of a drawn location is drawn with it, as often as
    the location. `diff` is the per-clip difference to average (A − B correctness, already averaged over seeds);
    one resample serves every device and both sides, so the replicates are paired. NaN where a resample holds
    no clip of a weighted device."""
    diff, devices, units = np.asarray(diff, float), np.asarray(devices, str), np.asarray(units, str)
    _, unit_of = np.unique(units, return_inverse=True)
    k = int(unit_of.max()) + 1 if len(unit_of) else 0
    if k == 0:
        return np.full(resamples, np.nan)
    sums = {d: np.bincount(unit_of[devices == d], weights=diff[devices == d], minlength=k) for d in weights}
    counts = {d: np.bincount(unit_of[devices == d], minlength=k).astype(float) for d in weights}
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        draws = rng.multinomial(k, np.full(k, 1.0 / k), size=min(_BOOTSTRAP_CHUNK, resamples - start)).astype(float)
        total = np.zeros(len(draws))
        with np.errstate(invalid="ignore", divide="ignore"):
            for d, w in weights.items():
                total += w * (draws @ sums[d]) / (draws @ counts[d])
        out[start:start + len(draws)] = total
    return out


def _clip_outcomes(row, metric_weights: Mapping[str, float]) -> pd.DataFrame | None:
    """A run's per-clip outcomes, checked to give the accuracies its metrics.json states (None: no predictions)."""
    outcomes = load_outcomes(row["run_dir"])
    if outcomes is None:
        return None
    for d in metric_weights:
        acc = float(outcomes.loc[outcomes["device"] == d, "correct"].mean())
        if not abs(acc - float(row[f"acc_{d}"])) <= ACC_TOLERANCE:
            raise ValueError(f"{row['run_dir']}/predictions.npz gives device {d} an accuracy of {acc!r}, but its "
                             f"metrics.json says acc_{d} = {float(row[f'acc_{d}'])!r}: the two files are not of one run")
    return outcomes.set_index("filename")


def test_set_sampling(cell_a: pd.DataFrame, cell_b: pd.DataFrame, metric: str, *, seeds,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The test-set sampling error of the seed-mean difference A − B (percentage points): a paired bootstrap over
    the recording locations of the test set (the location of a clip is the `identifier` of its file name), the
    same resamples for A, B and every seed. {se_test, n_locations, n_resamples}; se_test NaN (with `missing`
    naming the runs) where a paired run has no predictions.npz."""
    from heatedasc.tau import parse_filename

    weights = DEVICE_WEIGHTS[metric]
    per_seed, missing, devices = [], [], None
    for s in seeds:
        sides = []
        for cell in (cell_a, cell_b):
            row = cell[cell["seed"].astype(int) == int(s)].iloc[0]
            outcomes = _clip_outcomes(row, weights)
            if outcomes is None:
                missing.append(str(Path(row["run_dir"]) / "predictions.npz"))
            sides.append(outcomes)
        if any(side is None for side in sides):
            continue
        a, b = sides
        assert a is not None and b is not None  # the `continue` above
        if set(a.index) != set(b.index) or (devices is not None and set(a.index) != set(devices.index)):
            raise ValueError(f"{cell_a['run_dir'].iloc[0]} and {cell_b['run_dir'].iloc[0]}: the runs' predictions.npz "
                             "hold different test clips: not one test set")
        devices = a["device"]
        per_seed.append(a["correct"].astype(float) - b.loc[a.index, "correct"].astype(float))
    out = {"se_test": np.nan, "n_locations": 0, "n_resamples": 0, "missing": missing}
    if missing or not per_seed:
        return out
    diff = pd.concat(per_seed, axis=1).mean(axis=1)  # per clip, averaged over seeds (clips aligned by name)
    units = [parse_filename(f)["identifier"] for f in diff.index]
    assert devices is not None  # set with the first entry of per_seed
    reps = location_bootstrap(diff.to_numpy() * 100.0, devices.loc[diff.index].to_numpy(), np.asarray(units),
                              weights, resamples=resamples, seed=seed)
    reps = reps[~np.isnan(reps)]
    out.update(se_test=float(reps.std(ddof=1)) if len(reps) > 1 else np.nan, n_locations=len(set(units)),
               n_resamples=int(len(reps)))
    return out


def combined_interval(mean: float, seed_half: float, se_test: float, *, confidence: float) -> tuple[float, float]:
    """mean ± √(h_seeds² + (z · se_test)²): the seed interval's half-width and the test-set sampling half-width,
    two independent sources of error added in variance."""
    half = math.hypot(seed_half, z_quantile(confidence) * se_test)
    return mean - half, mean + half


def significance_table(runs: pd.DataFrame, comparisons: list, *, confidence: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every configured comparison {name, metric, a: cell, b: cell}, paired over seeds, in percentage points:
    the seed interval, the test-set sampling interval, both combined (the verdict), and the verdict of the
    family of comparisons (Bonferroni over those with an interval). Cells are named by their correction's label
    (`labels`; its own name where none)."""
    labels = labels or {}
    rows = []
    for comp in comparisons:
        metric = METRICS.get(comp["metric"], comp["metric"])
        if metric not in METRICS.values():
            raise ValueError(f"report.comparisons {comp['name']!r}: unknown metric {comp['metric']!r} "
                             f"(one of {', '.join(list(METRICS) + list(METRICS.values()))})")
        name = next(k for k, v in METRICS.items() if v == metric)
        cells, sides = {}, {}
        for key in ("a", "b"):
            cells[key] = select_cell(runs, **{k: comp[key][k] for k in ("correction", "temperature", "loss")})
            sides[key] = cells[key].set_index(cells[key]["seed"].astype(int))[metric].astype(float) * 100.0
        res = paired_difference(sides["a"], sides["b"], confidence=confidence)
        seeds = [int(s) for s in res["seeds"].split()]
        # no paired seeds: se_test NaN, 0 locations and resamples
        sampling = test_set_sampling(cells["a"], cells["b"], name, seeds=seeds, resamples=resamples, seed=seed)
        z_half = z_quantile(confidence) * sampling["se_test"]
        res.update(se_test=sampling["se_test"], n_locations=sampling["n_locations"],
                   n_resamples=sampling["n_resamples"], test_low=res["mean_diff"] - z_half,
                   test_high=res["mean_diff"] + z_half)  # total_low/high: NaN (the frame's columns) unless set below
        if res["verdict"] not in (NOT_RESOLVABLE, NO_SPREAD):
            if isnan(sampling["se_test"]):
                res.update(total_low=res["ci_low"], total_high=res["ci_high"])
                res["verdict"] += "; seed spread only: no predictions.npz, so test-set sampling is not included"
            else:
                res["total_low"], res["total_high"] = combined_interval(
                    res["mean_diff"], res["ci_high"] - res["mean_diff"], sampling["se_test"], confidence=confidence)
                res["verdict"] = _verdict(res["total_low"], res["total_high"], f"{confidence * 100:g}%",
                                          "seeds and test clips")
        rows.append({"comparison": comp["name"], "metric": comp["metric"], "a": _describe(comp["a"], labels),
                     "b": _describe(comp["b"], labels), "n_a": len(sides["a"]), "n_b": len(sides["b"]), **res,
                     "claim": comp.get("claim", "")})
    table = pd.DataFrame(rows, columns=["comparison", "metric", "a", "b", "n_a", "n_b", "n_pairs", "seeds", "mean_a",
                                        "mean_b", "mean_diff", "sd_diff", "t_crit", "ci_low", "ci_high", "se_test",
                                        "n_locations", "n_resamples", "test_low", "test_high", "total_low",
                                        "total_high", "verdict", "claim"])
    return family_verdicts(table, confidence=confidence)


def family_verdicts(table: pd.DataFrame, *, confidence: float) -> pd.DataFrame:
    """The multiple-comparison policy: the k comparisons that have an interval form one family; each is judged at
    the Bonferroni level 1 − (1 − confidence)/k (family-wise error ≤ 1 − confidence), its seed and test-set
    half-widths widened to that level."""
    out = table.copy()
    judged = out["total_low"].notna()
    k = int(judged.sum())
    out["family_k"] = k
    out["family_confidence"] = 1 - (1 - confidence) / k if k else np.nan
    out["family_low"], out["family_high"], out["family_verdict"] = np.nan, np.nan, "–"
    for i in out.index[judged]:
        r = out.loc[i]
        level = out.at[i, "family_confidence"]
        seed_half = t_quantile(level, int(r["n_pairs"]) - 1) * r["sd_diff"] / math.sqrt(r["n_pairs"])
        se = 0.0 if isnan(r["se_test"]) else r["se_test"]
        low, high = combined_interval(r["mean_diff"], seed_half, se, confidence=level)
        out.loc[i, ["family_low", "family_high"]] = low, high
        out.at[i, "family_verdict"] = _verdict(low, high, f"{level * 100:.4g}%", f"Bonferroni, k = {k}")
    return out


def significance_notes(confidence: float, k: int, selections) -> tuple[str, str, str]:
    """(how the intervals are made, the multiple-comparison policy, what they do not cover)."""
    level = f"{confidence * 100:g}%"
    method = (f"Accuracies in %; A − B in percentage points, paired by seed (only seeds that ran in both cells). "
              f"Seeds: mean ± t_(n−1) · sd/√n at {level}, the spread of training (initialisation, order, mixup) on "
              f"this one test set; with fewer than {MIN_PAIRS} pairs there is no interval and no verdict, and a zero "
              "spread (the same difference for every seed) is no evidence. Test clips: the sampling error of the "
              "test set itself, from a paired bootstrap over its recording locations (all clips of a drawn "
              f"location, every device; the same {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, for A, B "
              "and every seed; per-device accuracies recomputed on each), as mean ± z · se. Both: the two "
              "half-widths added in variance, √(h_seeds² + h_test²); the verdict is read from it.")
    policy = ("Multiple comparisons: the rows are the paper's claims, tested as one family. A claim counts as "
              "reproduced only if its Bonferroni interval excludes 0: the k rows that have an interval are each "
              f"judged at level 1 − (1 − {confidence:g})/k, so the chance of any false \"excludes 0\" among them is "
              f"at most {1 - confidence:.2g}. The {level} verdict beside it is unadjusted, for one comparison read "
              "alone." + (f" Here k = {k}." if k else " Here no row has an interval (k = 0)."))
    cover = ("Not covered by any interval: other data (another test set of other locations, the real TAU data for a "
             "synthetic run), other code, hardware or software versions.")
    if "test" in set(selections):
        cover += (" With train.selection test, each run's epoch was chosen as the best on this same test set, so "
                  "both A and B are optimistic, by amounts the intervals do not measure and that need not cancel "
                  "in A − B (train.selection holdout removes this).")
    return method, policy, cover


def significance_document(data: pd.DataFrame, ctx: RenderContext) -> TableDoc:
    confidence = float(ctx.config["report"]["confidence"])
    num = lambda v: "–" if isnan(v) else f"{v:.1f}"  # noqa: E731
    interval = lambda lo, hi: "–" if isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]"  # noqa: E731
    k = int(data["family_k"].iloc[0]) if len(data) else 0
    rows = []
    for _, r in data.iterrows():
        diff = "–" if isnan(r["mean_diff"]) else f"{r['mean_diff']:+.1f}"
        rows.append([r["comparison"], r["a"], r["b"], r["metric"], f"{r['n_pairs']} ({text(r['seeds'])})",
                     num(r["mean_a"]), num(r["mean_b"]), diff, interval(r["ci_low"], r["ci_high"]),
                     interval(r["test_low"], r["test_high"]), interval(r["total_low"], r["total_high"]),
                     r["verdict"], text(r["family_verdict"]), text(r["claim"])])
    level = f"{confidence * 100:g}%"
    frame = pd.DataFrame(rows, columns=["comparison", "A", "B", "metric", "pairs (seeds)", "mean A", "mean B",
                                        "A − B", f"{level} CI: seeds", f"{level} CI: test clips",
                                        f"{level} CI: both", "verdict", f"family verdict (Bonferroni, k = {k})",
                                        "paper's claim"])
    assert ctx.runs is not None  # the artefact needs the runs' metrics (registry)
    notes = significance_notes(confidence, k, ctx.runs["selection"].astype(str))
    return TableDoc("Paired comparisons over seeds and test clips (accuracies in %, differences in percentage points)",
                    frame, notes, caveat=ctx.caveat, shared=(selection_note(ctx.runs),))


def render_significance(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    cfg = ctx.config["report"]
    return {"significance": significance_table(ctx.runs, list(cfg["comparisons"]),
                                               confidence=float(cfg["confidence"]), labels=correction_labels(cfg))}
