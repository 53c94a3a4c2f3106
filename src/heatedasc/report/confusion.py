"""The confusion artefact, beyond the paper, from the per-run metrics: device-wise confusion matrices of the
configured run sets (`report.confusion_runs`), summed over seeds (figures/confusion.png, tables/confusion.csv)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import class_names, select_cell
from heatedasc.tau import DEVICES

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext


def confusion_sums(runs: pd.DataFrame, specs: list, n_classes: int) -> list[dict]:
    """Per configured run set {name, correction, temperature, loss}: the per-device confusion matrices of
    metrics.json summed over seeds (None where the cell has no run)."""
    out = []
    for spec in specs:
        cell = select_cell(runs, correction=spec["correction"], temperature=spec["temperature"], loss=spec["loss"])
        mats = {}
        for d in DEVICES:
            per_seed = [np.asarray(c[d], dtype=np.int64) for c in cell["confusion"] if isinstance(c, dict) and d in c]
            mats[d] = mat = np.sum(per_seed, axis=0) if per_seed else None
            if mat is not None and mat.shape != (n_classes, n_classes):
                raise ValueError(f"{spec['name']}: device {d} confusion matrix has shape {mat.shape}, "
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
    # A figure: the counts it draws are confusion_sums' (tested directly, and in tests/test_report.py that every
    # class label fits); its layout and styling are not scored by mutation testing.
    # pragma: no mutate start
    plt = pyplot()
    k = len(class_names)
    # full class names (street_pedestrian is the longest): room for them below and left of each panel
    fig, axes = plt.subplots(max(len(sums), 1), len(DEVICES), figsize=(4.8 * len(DEVICES), 4.8 * max(len(sums), 1)),
                             squeeze=False)
    labels = [c.replace("_", " ") for c in class_names]
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
            ax.set_xticks(range(k), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(k), labels, fontsize=6)
            ax.set_xlabel("predicted", fontsize=7)
            ax.set_ylabel("true", fontsize=7)
    if not sums:
        axes[0, 0].text(0.5, 0.5, "no confusion run sets configured (report.confusion_runs)", ha="center")
    fig.suptitle("Test-set confusion per device, summed over seeds (colour: share of the true class)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, out_png, dpi=100)
    plt.close(fig)
    # pragma: no mutate end


def render_confusion(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    names = class_names()
    sums = confusion_sums(ctx.runs, list(ctx.config["report"]["confusion_runs"]), len(names))
    plot_confusion(sums, out["confusion"], class_names=names)
    return {"confusion_csv": confusion_frame(sums, names)}
