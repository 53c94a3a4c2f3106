"""Fig. 3 of the paper from the per-run metrics: accuracy (Avg.BC and Dev.A) against the temperature T per
correction, mean ± sd over seeds, with the paper's best row as a star (figures/fig3.png, .pdf and the data
behind it, figures/fig3.csv)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import pandas as pd

from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import METRICS, correction_colors, correction_labels, one_per_seed, seed_stats

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext


def fig3_data(runs: pd.DataFrame, *, loss: str, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Mean ± sd over seeds of Avg.BC and Dev.A per (correction, T) of the `loss` runs, the correction by its label
    (`labels`: correction -> label; its own name where none)."""
    labels = labels or {}
    sel = runs[runs["loss"] == loss]
    rows = []
    for (corr, t), g in sel.groupby(["correction", "temperature"]):
        one_per_seed(runs, g, f"correction {corr}, T={float(t):g}, loss {loss}")  # never pooled over further axes
        for name in ("Avg.BC", "Dev.A"):
            mean, sd, n = seed_stats(g[METRICS[name]])
            rows.append({"correction": labels.get(corr, corr), "temperature": t, "metric": name,
                         "mean": mean, "sd": sd, "n": n})
    return pd.DataFrame(rows, columns=["correction", "temperature", "metric", "mean", "sd", "n"])


def plot_fig3(data: pd.DataFrame, out_png, *, out_pdf=None, loss: str, paper_best: dict | None = None,
              paper_best_label: str = "paper best", report_cfg: Mapping | None = None) -> None:
    """Accuracy against T per correction (fig3_data), mean ± sd band over seeds. `paper_best` (docs/reproduction.md §9, %)
    holds `temperature`, `avg_bc` and `dev_a` of the paper's best row, drawn as a star. The corrections' labels
    and colours: `report.corrections` of `report_cfg` (seaborn's colorblind palette where it gives no colour);
    a labelled correction with no run is named as missing."""
    import seaborn as sns

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    report_cfg = report_cfg or {}
    labels = correction_labels(report_cfg)
    for label in dict.fromkeys(data["correction"]):  # drawn under a label (fig3_data): one not configured is its own
        if label not in labels.values():
            labels[label] = label
    palette = correction_colors(report_cfg, labels, sns.color_palette("colorblind", max(len(labels), 3)))
    for ax, name in zip(axes, ("Avg.BC", "Dev.A")):
        d = data[data["metric"] == name]
        for corr, g in d.groupby("correction"):
            g = g.sort_values("temperature")
            ax.plot(g["temperature"], g["mean"], marker="o", label=corr, color=palette.get(corr))
            sd = g["sd"].fillna(0.0)
            ax.fill_between(g["temperature"], g["mean"] - sd, g["mean"] + sd, alpha=0.2, color=palette.get(corr))
        for label in labels.values():  # a correction with no run is named as missing, never drawn as 0
            if label not in set(d["correction"]):
                ax.plot([], [], linestyle="none", marker="x", color=palette.get(label), label=f"{label}: no runs")
        if paper_best:
            key = "avg_bc" if name == "Avg.BC" else "dev_a"
            ax.scatter([paper_best["temperature"]], [paper_best[key]], marker="*", s=150, color="k",
                       label=paper_best_label)
        ax.set_title(f"{name} ({loss} loss)")
        ax.set_xlabel("temperature T")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=120)
    if out_pdf:
        save_figure(fig, out_pdf, format="pdf")
    plt.close(fig)


def paper_best(report_cfg: Mapping, paper: Mapping) -> tuple[dict | None, str]:
    """The paper's best row of Table 3 (highest Avg.BC among the configured rows) for Fig. 3's star."""
    rows = [r for r in report_cfg["table3_rows"] if r["name"] in paper.get("table3_ours", {})
            and r["loss"] == report_cfg["fig3_loss"]]
    if not rows:
        return None, ""
    best = max(rows, key=lambda r: paper["table3_ours"][r["name"]]["avg_bc"])
    values = dict(paper["table3_ours"][best["name"]], temperature=float(best["temperature"]))
    return values, f"paper best ({best['name']})"


def render_fig3(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    cfg = ctx.config["report"]
    assert ctx.runs is not None  # the artefact needs the runs' metrics (registry)
    data = fig3_data(ctx.runs, loss=cfg["fig3_loss"], labels=correction_labels(cfg, ctx.runs["correction"]))
    best, label = paper_best(cfg, ctx.config["paper"])
    plot_fig3(data, out["fig3"], out_pdf=out.get("fig3_pdf"), loss=cfg["fig3_loss"], paper_best=best,
              paper_best_label=label, report_cfg=cfg)
    return {"fig3_csv": data}
