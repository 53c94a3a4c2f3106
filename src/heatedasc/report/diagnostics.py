"""Beyond the paper, from the saved per-run outputs (no retraining): calibration of softmax(z/T) (ECE
and reliability diagrams), device-wise confusion matrices, and paired significance of the comparisons
the paper draws."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from heatedasc.metrics import ECE_BINS, ece_from_bins, reliability_bins
from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import LABELS, METRICS, class_names, grid_axes, load_predictions, select_cell
from heatedasc.report.tables import TableDoc, isnan, text
from heatedasc.tau import DEVICES

if TYPE_CHECKING:
    from heatedasc.report.render import RenderContext

MIN_PAIRS = 3  # fewer seeds paired than this: no verdict (t_{0.975,1} = 12.7 makes any interval meaningless)


# ---------------------------------------------------------------- calibration
def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> tuple[pd.DataFrame, float]:
    """The reliability bins and the ECE of metrics.json `ece` (heatedasc.metrics: one definition)."""
    bins = reliability_bins(probs, labels, n_bins)
    return bins, ece_from_bins(bins)


def _run_ece(row) -> float:
    if not isnan(row.get("ece")):
        return float(row["ece"])
    pred = load_predictions(row["run_dir"])
    return reliability(pred["probs"], pred["labels"])[1] if pred else float("nan")


def calibration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """ECE (%) of softmax(z/T) per (correction, T, loss): mean ± sd over seeds (ddof=1), n, and the ECE,
    accuracy and mean confidence of the test predictions pooled over seeds (predictions.npz)."""
    rows = []
    for (corr, t, loss), g in runs.groupby(["correction", "temperature", "loss"], sort=True):
        eces = np.array([_run_ece(r) for _, r in g.iterrows()], dtype=float) * 100.0
        eces = eces[~np.isnan(eces)]
        preds = [p for p in (load_predictions(d) for d in g["run_dir"]) if p is not None]
        pooled = {"ece_pooled": np.nan, "accuracy_pooled": np.nan, "confidence_pooled": np.nan}
        if preds:
            probs = np.concatenate([p["probs"] for p in preds])
            labels = np.concatenate([p["labels"] for p in preds])
            pooled = {"ece_pooled": reliability(probs, labels)[1] * 100.0,
                      "accuracy_pooled": float((probs.argmax(1) == labels).mean()) * 100.0,
                      "confidence_pooled": float(probs.max(1).mean()) * 100.0}
        rows.append({"correction": corr, "temperature": float(t), "loss": loss,
                     "ece_mean": float(eces.mean()) if len(eces) else np.nan,
                     "ece_sd": float(eces.std(ddof=1)) if len(eces) > 1 else np.nan,
                     "n": int(len(eces)), "n_pooled_runs": len(preds), **pooled})
    return pd.DataFrame(rows, columns=["correction", "temperature", "loss", "ece_mean", "ece_sd", "n",
                                       "n_pooled_runs", "ece_pooled", "accuracy_pooled", "confidence_pooled"])


def calibration_frame(table: pd.DataFrame, *, corrections, temperatures, losses) -> pd.DataFrame:
    """The printed grid: correction × loss rows, T columns over the configured axes, "missing" where a
    cell has no run."""
    temps = sorted({float(t) for t in temperatures} | set(table["temperature"].astype(float)))
    corrs = list(dict.fromkeys(list(corrections) + list(table["correction"])))
    rows = []
    for loss in dict.fromkeys(list(losses) + list(table["loss"])):
        for corr in corrs:
            cells = [loss, LABELS.get(corr, corr)]
            for t in temps:
                hit = table[(table["correction"] == corr) & (table["loss"] == loss)
                            & np.isclose(table["temperature"].astype(float), t)]
                if hit.empty or int(hit["n"].iloc[0]) == 0:
                    cells.append("missing")
                    continue
                r = hit.iloc[0]
                cell = f"{r['ece_mean']:.1f}" + ("" if isnan(r["ece_sd"]) else f" ± {r['ece_sd']:.1f}")
                cells.append(cell + f" ({int(r['n'])})")
            rows.append(cells)
    return pd.DataFrame(rows, columns=["loss", "correction"] + [f"T={t:g}" for t in temps])


def calibration_document(data: pd.DataFrame, ctx: RenderContext) -> TableDoc:
    sweep = grid_axes(ctx.config, ctx.runs)
    frame = calibration_frame(data, corrections=sweep["correction"], temperatures=sweep["temperature"],
                              losses=sweep["loss"])
    note = (f"ECE in %, {ECE_BINS} equal-width confidence bins: mean ± sd over seeds (number of seeds); "
            "\"missing\" = no run of that cell. The heated-up softmax is trained with p = softmax(z/T), "
            "so its probabilities are those at the training temperature T. Pooled-over-seeds ECE, accuracy "
            "and confidence are in the CSV.")
    return TableDoc("Expected calibration error of softmax(z/T) on the test set", frame, (note,))


def plot_reliability(runs: pd.DataFrame, out_png, *, loss: str, corrections, temperatures) -> None:
    """Reliability diagrams, rows = correction, columns = T, test predictions of `loss` runs pooled over
    seeds; each panel names its pooled ECE and the per-seed mean ± sd."""
    plt = pyplot()
    temps = sorted({float(t) for t in temperatures} | set(runs.loc[runs["loss"] == loss, "temperature"].astype(float)))
    corrs = list(dict.fromkeys(list(corrections) + list(runs.loc[runs["loss"] == loss, "correction"])))
    fig, axes = plt.subplots(len(corrs), len(temps), figsize=(2.4 * len(temps) + 0.6, 2.4 * len(corrs) + 0.8),
                             squeeze=False, sharex=True, sharey=True)
    for i, corr in enumerate(corrs):
        for j, t in enumerate(temps):
            ax = axes[i, j]
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{LABELS.get(corr, corr)}, T={t:g}", fontsize=8)
            cell = select_cell(runs, correction=corr, temperature=t, loss=loss)
            preds = [p for p in (load_predictions(d) for d in cell["run_dir"]) if p is not None]
            if not preds:
                ax.text(0.5, 0.5, "missing" if cell.empty else "no predictions.npz", ha="center", va="center",
                        fontsize=9, color="firebrick")
                continue
            probs = np.concatenate([p["probs"] for p in preds])
            labels = np.concatenate([p["labels"] for p in preds])
            bins, pooled_ece = reliability(probs, labels)
            used = bins[bins["count"] > 0]
            width = bins["hi"].iloc[0] - bins["lo"].iloc[0]
            ax.bar(used["lo"], used["accuracy"], width=width, align="edge", color="tab:blue", alpha=0.75,
                   edgecolor="k", lw=0.3, label="accuracy")
            ax.bar(used["lo"], used["confidence"] - used["accuracy"], bottom=used["accuracy"], width=width,
                   align="edge", fill=False, hatch="///", edgecolor="tab:red", lw=0.6,
                   label="gap to mean confidence")
            eces = np.array([_run_ece(r) for _, r in cell.iterrows()], dtype=float) * 100
            per_seed = f"{np.nanmean(eces):.1f}" + (f" ± {np.nanstd(eces, ddof=1):.1f}" if len(eces) > 1 else "")
            ax.text(0.03, 0.97, f"ECE pooled {pooled_ece * 100:.1f}%\nper seed {per_seed} (n={len(eces)})",
                    ha="left", va="top", fontsize=6.5, transform=ax.transAxes,
                    bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
        axes[i, 0].set_ylabel("accuracy")
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    handles, labs = next(((h, l) for h, l in (a.get_legend_handles_labels() for a in axes.flat) if h), ([], []))
    if handles:
        fig.legend(handles, labs, loc="lower center", ncol=2, fontsize=7)
    fig.suptitle(f"Reliability of softmax(z/T), {loss} loss, test set pooled over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save_figure(fig, out_png, dpi=100)
    plt.close(fig)


def render_calibration(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    sweep = grid_axes(ctx.config, ctx.runs)
    plot_reliability(ctx.runs, out["reliability"], loss=ctx.config["report"]["calibration_loss"],
                     corrections=sweep["correction"], temperatures=sweep["temperature"])
    return {"calibration": calibration_table(ctx.runs)}


# ---------------------------------------------------------------- confusion matrices
def confusion_sums(runs: pd.DataFrame, specs: list, n_classes: int) -> list[dict]:
    """Per configured run set {name, correction, temperature, loss}: the per-device confusion matrices of
    metrics.json summed over seeds (None where the cell has no run)."""
    out = []
    for spec in specs:
        cell = select_cell(runs, correction=spec["correction"], temperature=spec["temperature"], loss=spec["loss"])
        mats = {}
        for d in DEVICES:
            per_seed = [np.asarray(c[d], dtype=np.int64) for c in cell["confusion"] if isinstance(c, dict) and d in c]
            mats[d] = np.sum(per_seed, axis=0) if per_seed else None
            if mats[d] is not None and mats[d].shape != (n_classes, n_classes):
                raise ValueError(f"{spec['name']}: device {d} confusion matrix has shape {mats[d].shape}, "
                                 f"expected {n_classes}×{n_classes}")
        out.append({**spec, "n_seeds": int(len(cell)), "seeds": sorted(int(s) for s in cell["seed"]), "matrices": mats})
    return out


def confusion_frame(sums: list[dict], class_names) -> pd.DataFrame:
    rows = []
    for s in sums:
        for d, mat in s["matrices"].items():
            if mat is None:
                continue
            for i, true in enumerate(class_names):
                for j, pred in enumerate(class_names):
                    rows.append({"name": s["name"], "correction": s["correction"], "temperature": float(s["temperature"]),
                                 "loss": s["loss"], "n_seeds": s["n_seeds"], "device": d, "true": true,
                                 "predicted": pred, "count": int(mat[i, j])})
    return pd.DataFrame(rows, columns=["name", "correction", "temperature", "loss", "n_seeds", "device", "true",
                                       "predicted", "count"])


def plot_confusion(sums: list[dict], out_png, *, class_names) -> None:
    """Rows = run sets, columns = devices; colour = row-normalised (recall), numbers = counts summed over seeds."""
    plt = pyplot()
    k = len(class_names)
    fig, axes = plt.subplots(max(len(sums), 1), len(DEVICES), figsize=(4.2 * len(DEVICES), 4.2 * max(len(sums), 1)),
                             squeeze=False)
    short = [c[:10] for c in class_names]
    for i, s in enumerate(sums):
        for j, d in enumerate(DEVICES):
            ax = axes[i, j]
            mat = s["matrices"][d]
            if mat is None:
                ax.text(0.5, 0.5, f"{s['name']}\ndevice {d.upper()}\nmissing", ha="center", va="center",
                        color="firebrick")
                ax.set_axis_off()
                continue
            rows = mat.sum(axis=1, keepdims=True)
            norm = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=float), where=rows > 0)
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            for a in range(k):
                for b in range(k):
                    if mat[a, b]:
                        ax.text(b, a, str(mat[a, b]), ha="center", va="center", fontsize=6,
                                color="white" if norm[a, b] > 0.6 else "black")
            acc = np.trace(mat) / mat.sum() * 100 if mat.sum() else float("nan")
            ax.set_title(f"{s['name']}: device {d.upper()}, acc {acc:.1f}% ({s['n_seeds']} seeds)", fontsize=8)
            ax.set_xticks(range(k), short, rotation=90, fontsize=6)
            ax.set_yticks(range(k), short, fontsize=6)
            ax.set_xlabel("predicted", fontsize=7)
            ax.set_ylabel("true", fontsize=7)
    if not sums:
        axes[0, 0].text(0.5, 0.5, "no confusion run sets configured (report.confusion_runs)", ha="center")
    fig.suptitle("Test-set confusion per device, summed over seeds (colour: share of the true class)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, out_png, dpi=100)
    plt.close(fig)


def render_confusion(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    names = class_names()
    sums = confusion_sums(ctx.runs, list(ctx.config["report"]["confusion_runs"]), len(names))
    plot_confusion(sums, out["confusion"], class_names=names)
    return {"confusion_csv": confusion_frame(sums, names)}


# ---------------------------------------------------------------- paired significance
SIGNIFICANCE_TEXT = ("comparison", "metric", "a", "b", "seeds", "verdict", "claim")
NOT_RESOLVABLE = f"not resolvable (n < {MIN_PAIRS} pairs)"
NO_SPREAD = "not resolvable (sd = 0: the same difference for every seed)"


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value t_{(1+confidence)/2, df}."""
    from scipy import stats

    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _describe(side: dict) -> str:
    return f"{LABELS.get(side['correction'], side['correction'])} T={float(side['temperature']):g} {side['loss']}"


def paired_difference(a: pd.Series, b: pd.Series, *, confidence: float = 0.95) -> dict:
    """Mean of a − b over the shared index (seeds), its sample sd (ddof=1) and the t-interval. No verdict
    and no interval from fewer than MIN_PAIRS pairs; a zero-width interval (sd = 0) is no evidence either."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    n = len(both)
    diff = both["a"] - both["b"]
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
    level = f"{confidence * 100:g}%"
    if half < 1e-9:  # identical differences up to float rounding: the seeds show no spread to test against
        out["verdict"] = NO_SPREAD
    elif out["ci_low"] > 0:
        out["verdict"] = f"A > B: the {level} interval excludes 0"
    elif out["ci_high"] < 0:
        out["verdict"] = f"A < B: the {level} interval excludes 0"
    else:
        out["verdict"] = f"not significant: the {level} interval includes 0"
    return out


def significance_table(runs: pd.DataFrame, comparisons: list, *, confidence: float = 0.95) -> pd.DataFrame:
    """Every configured comparison {name, metric, a: cell, b: cell}, paired over seeds, in percentage points."""
    rows = []
    for comp in comparisons:
        metric = METRICS.get(comp["metric"], comp["metric"])
        if metric not in METRICS.values():
            raise ValueError(f"report.comparisons {comp['name']!r}: unknown metric {comp['metric']!r} "
                             f"(one of {', '.join(list(METRICS) + list(METRICS.values()))})")
        sides = {}
        for key in ("a", "b"):
            cell = select_cell(runs, **{k: comp[key][k] for k in ("correction", "temperature", "loss")})
            sides[key] = cell.set_index(cell["seed"].astype(int))[metric].astype(float) * 100.0
        res = paired_difference(sides["a"], sides["b"], confidence=confidence)
        rows.append({"comparison": comp["name"], "metric": comp["metric"], "a": _describe(comp["a"]),
                     "b": _describe(comp["b"]), "n_a": len(sides["a"]), "n_b": len(sides["b"]), **res,
                     "claim": comp.get("claim", "")})
    return pd.DataFrame(rows, columns=["comparison", "metric", "a", "b", "n_a", "n_b", "n_pairs", "seeds", "mean_a",
                                       "mean_b", "mean_diff", "sd_diff", "t_crit", "ci_low", "ci_high", "verdict",
                                       "claim"])


def significance_document(data: pd.DataFrame, ctx: RenderContext) -> TableDoc:
    confidence = float(ctx.config["report"]["confidence"])
    num = lambda v: "–" if isnan(v) else f"{v:.1f}"  # noqa: E731
    rows = []
    for _, r in data.iterrows():
        ci = "–" if isnan(r["ci_low"]) else f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
        diff = "–" if isnan(r["mean_diff"]) else f"{r['mean_diff']:+.1f}"
        rows.append([r["comparison"], r["a"], r["b"], r["metric"], f"{r['n_pairs']} ({text(r['seeds'])})",
                     num(r["mean_a"]), num(r["mean_b"]), diff, ci, r["verdict"], text(r["claim"])])
    frame = pd.DataFrame(rows, columns=["comparison", "A", "B", "metric", "pairs (seeds)", "mean A", "mean B",
                                        "A − B", f"{confidence * 100:g}% CI", "verdict", "paper's claim"])
    note = (f"Accuracies in %; A − B in percentage points, paired by seed (only seeds that ran in both cells). "
            f"Interval: mean ± t_(n−1) · sd/√n at {confidence * 100:g}% (two-sided, no correction for multiple "
            f"comparisons). With fewer than {MIN_PAIRS} pairs there is no interval and no verdict, and an interval "
            "of zero width (the same difference for every seed) is not called significant.")
    return TableDoc("Paired comparisons over seeds", frame, (note,), caveat=ctx.caveat)


def render_significance(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    cfg = ctx.config["report"]
    return {"significance": significance_table(ctx.runs, list(cfg["comparisons"]),
                                               confidence=float(cfg["confidence"]))}
