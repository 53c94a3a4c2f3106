"""Fig. 2 of the paper from the embeddings of the Fig. 2 runs: a PCA of the GAP embeddings, test and train rows,
one column per T (figures/fig2.png)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import class_names

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext


def _pca_fit(x: np.ndarray):
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2].T


def plot_fig2(embedding_files: Mapping[float, str | None], out_png, *, class_names) -> None:
    """PCA (fitted on each T's train embeddings) of GAP outputs: row 1 test, row 2 train, per T."""
    plt = pyplot()
    temps = list(embedding_files)
    fig, axes = plt.subplots(2, max(len(temps), 1), figsize=(3.2 * max(len(temps), 1), 6.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for j, t in enumerate(temps):
        f = embedding_files[t]
        if not f or not Path(f).exists():
            for i in range(2):
                axes[i, j].text(0.5, 0.5, f"T={t:g}\nmissing run", ha="center", va="center")
                axes[i, j].set_axis_off()
            continue
        e = np.load(f)
        mean, basis = _pca_fit(e["train_embeddings"].astype(np.float64))
        for i, part in enumerate(("test", "train")):
            z = (e[f"{part}_embeddings"] - mean) @ basis
            labels = e[f"{part}_labels"]
            for c, name in enumerate(class_names):
                m = labels == c
                axes[i, j].scatter(z[m, 0], z[m, 1], s=4, color=colors(c), label=name)
            axes[i, j].set_title(f"T={t:g}, {part}")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    handles, labs = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labs, loc="lower center", ncol=5, fontsize=7, markerscale=3)
    fig.suptitle("GAP embeddings, PCA fitted on the train embeddings of each T")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    save_figure(fig, out_png, dpi=110)
    plt.close(fig)


def render_fig2(ctx: RenderContext, out: Mapping[str, str]) -> None:
    files = {float(t): ctx.fig2_embeddings.get(float(t)) for t in ctx.config["report"]["fig2_temperatures"]}
    plot_fig2(files, out["fig2"], class_names=class_names())
