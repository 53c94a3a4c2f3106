"""The calibration artefact, beyond the paper, from the saved per-run outputs (no retraining): the expected
calibration error of softmax(z/T) per correction, T and loss (tables/calibration.csv and its Markdown) and
reliability diagrams (figures/reliability.png)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from heatedasc.metrics import ECE_BINS, ece_from_bins, reliability_bins
from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import correction_labels, grid_axes, load_predictions, select_cell
from heatedasc.report.tables import TableDoc, isnan

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext


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


def calibration_frame(table: pd.DataFrame, *, corrections, temperatures, losses,
                      labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The printed grid: correction × loss rows (each correction by its label, `labels`), T columns over the
    configured axes, "missing" where a cell has no run."""
    labels = labels or {}
    temps = sorted({float(t) for t in temperatures} | set(table["temperature"].astype(float)))
    corrs = list(dict.fromkeys(list(corrections) + list(table["correction"])))
    rows = []
    for loss in dict.fromkeys(list(losses) + list(table["loss"])):
        for corr in corrs:
            cells = [loss, labels.get(corr, corr)]
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
                              losses=sweep["loss"], labels=correction_labels(ctx.config["report"]))
    note = (f"ECE in %, {ECE_BINS} equal-width confidence bins: mean ± sd over seeds (number of seeds); "
            "\"missing\" = no run of that cell. The heated-up softmax is trained with p = softmax(z/T), "
            "so its probabilities are those at the training temperature T. Pooled-over-seeds ECE, accuracy "
            "and confidence are in the CSV.")
    return TableDoc("Expected calibration error (%) of softmax(z/T) on the test set", frame, (note,))


def plot_reliability(runs: pd.DataFrame, out_png, *, loss: str, corrections, temperatures,
                     shown_as: Mapping[str, str] | None = None) -> None:
    """Reliability diagrams, rows = correction (by its label, `shown_as`), columns = T, test predictions of `loss`
    runs pooled over seeds; each panel names its pooled ECE and the per-seed mean ± sd."""
    shown_as = shown_as or {}
    # A figure: what it draws per panel is reliability() and the per-seed ECE of calibration_table (both tested
    # directly); its layout and styling are not scored by mutation testing.
    # pragma: no mutate start
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
            ax.set_title(f"{shown_as.get(corr, corr)}, T={t:g}", fontsize=8)
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
    # pragma: no mutate end


def render_calibration(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    sweep = grid_axes(ctx.config, ctx.runs)
    plot_reliability(ctx.runs, out["reliability"], loss=ctx.config["report"]["calibration_loss"],
                     corrections=sweep["correction"], temperatures=sweep["temperature"],
                     shown_as=correction_labels(ctx.config["report"]))
    return {"calibration": calibration_table(ctx.runs)}
