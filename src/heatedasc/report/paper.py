"""The paper's artefacts from the per-run metrics: Table 2, Table 3, Fig. 3, Fig. 2 and the summary
metrics `dvc metrics show` prints. Renderers take a RenderContext and the artefact's output paths and
return the tables they computed (the registry writes those as CSV and Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from heatedasc.fileio import atomic_dir, write_json
from heatedasc.plotting import pyplot, save_figure
from heatedasc.report.runs import (
    METRICS,
    class_names,
    correction_colors,
    correction_labels,
    one_per_seed,
    select_cell,
    selection_note,
)
from heatedasc.report.tables import TableDoc, format_cell, format_plain, format_published, integer_counts, isnan

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext

PAPER_KEYS = {"Dev.A": "dev_a", "Dev.B": "dev_b", "Dev.C": "dev_c", "Avg.BC": "avg_bc"}
ACCURACY_NOTE = ("Accuracies in %: mean ± sd over seeds (number of seeds); \"missing\" = no run of that cell; "
                 "paper = the published value (docs/reproduction.md §9); Δ = reproduction − paper, in percentage points.")
QUOTED_NOTE = ("Rows with source \"quoted from paper\" are other systems' numbers as the paper quotes them; "
               "they were not rerun here.")


def _agg(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().astype(float) * 100.0
    n = len(v)
    return (float(v.mean()) if n else np.nan, float(v.std(ddof=1)) if n > 1 else np.nan, n)


def _count_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.endswith("_n")]


# ---------------------------------------------------------------- Tables 2 and 3
def make_table2(runs: pd.DataFrame, *, temperature, paper_table2: dict, labels: Mapping[str, str]) -> pd.DataFrame:
    """Rows per correction (`labels`: correction -> its label, in row order; a correction of `runs` not in it
    gets a row under its own name); per loss × (Dev.A, Avg.BC): mean, sd (ddof=1), n seeds, paper, diff (%)."""
    rows = []
    rows_of = dict(labels)
    for corr in runs["correction"]:
        rows_of.setdefault(str(corr), str(corr))
    for corr, label in rows_of.items():
        row: dict[str, Any] = {"correction": label}
        for loss in ("focal", "ce"):
            cell = select_cell(runs, correction=corr, temperature=temperature, loss=loss)
            for name in ("Dev.A", "Avg.BC"):
                mean, sd, n = _agg(cell[METRICS[name]])
                paper = paper_table2.get(loss, {}).get(corr, {}).get(PAPER_KEYS[name], np.nan)
                prefix = f"{loss}_{name}"
                row.update({f"{prefix}_mean": mean, f"{prefix}_sd": sd, f"{prefix}_n": n,
                            f"{prefix}_paper": paper, f"{prefix}_diff": mean - paper})
        rows.append(row)
    df = pd.DataFrame(rows)
    return integer_counts(df, _count_columns(df))


def make_table3(runs: pd.DataFrame, *, rows: list, quoted: list, paper_ours: dict) -> pd.DataFrame:
    out = []
    for q in quoted:
        r = {"system": q["system"], "source": "quoted from paper", "params": q.get("params")}
        for name, key in PAPER_KEYS.items():
            # a quoted system's own numbers: no seeds, no paper column beside them (they ARE the paper's)
            r.update({f"{name}_mean": q.get(key) if q.get(key) is not None else np.nan, f"{name}_sd": np.nan,
                      f"{name}_n": None, f"{name}_paper": np.nan, f"{name}_diff": np.nan})
        out.append(r)
    for spec in rows:
        cell = select_cell(runs, correction=spec["correction"], temperature=spec["temperature"], loss=spec["loss"])
        paper = paper_ours.get(spec["name"], {})
        r = {"system": f"Base_model_{spec['name']}", "source": "this reproduction",
             "params": int(cell["params_keras"].iloc[0]) if len(cell) else np.nan}
        for name, key in PAPER_KEYS.items():
            mean, sd, n = _agg(cell[METRICS[name]])
            p = paper.get(key, np.nan)
            p = np.nan if p is None else p
            r.update({f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_n": n, f"{name}_paper": p,
                      f"{name}_diff": mean - p})
        out.append(r)
    df = pd.DataFrame(out)
    return integer_counts(df, ["params"] + _count_columns(df))


def result_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The printed cells of a result table: per metric group the reproduction ("mean ± sd (n)"), the
    paper's value and the difference (reproduction − paper, percentage points)."""
    groups = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]
    first = [c for c in df.columns if not any(c.startswith(g + "_") for g in groups)]
    header = list(first)
    for g in groups:
        header += [g.replace("_", " "), f"{g.replace('_', ' ')} paper", "Δ"]
    rows = []
    for _, r in df.iterrows():
        ours = r.get("source") == "this reproduction"
        cells = ["missing" if ours and c == "params" and isnan(r[c]) else format_plain(r[c]) for c in first]
        for g in groups:
            n = r.get(f"{g}_n")
            cells.append(format_cell(r[f"{g}_mean"], r.get(f"{g}_sd", np.nan), None if isnan(n) else n))
            paper, diff = r.get(f"{g}_paper"), r.get(f"{g}_diff")
            cells.append("–" if isnan(paper) else format_published(paper))
            cells.append("–" if isnan(diff) else f"{diff:+.1f}")
        rows.append(cells)
    return pd.DataFrame(rows, columns=header)


def _result_doc(data: pd.DataFrame, ctx: RenderContext, title: str) -> TableDoc:
    notes = ACCURACY_NOTE
    if "source" in data.columns and (data["source"] == "quoted from paper").any():
        notes += "\n" + QUOTED_NOTE
    return TableDoc(title, result_frame(data), (notes,), caveat=ctx.caveat, shared=(selection_note(ctx.runs),))


def table2_document(data: pd.DataFrame, ctx: RenderContext) -> TableDoc:
    return _result_doc(data, ctx, f"Table 2: accuracy (%) at T = {ctx.config['report']['table2_temperature']:g}")


def table3_document(data: pd.DataFrame, ctx: RenderContext) -> TableDoc:
    return _result_doc(data, ctx, "Table 3: accuracy (%) on the test set (fold1_evaluate)")


def render_tables(ctx: RenderContext, out: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    cfg, paper = ctx.config["report"], ctx.config["paper"]
    assert ctx.runs is not None  # the artefact needs the runs' metrics (registry)
    one_per_seed(ctx.runs, ctx.runs, "the tables and metrics")  # their means are over seeds: before writing any
    write_json(out["summary"], summary_metrics(ctx.runs))
    with atomic_dir(out["dvc_metrics"]) as folder:
        for correction, row in dvc_metrics(ctx.runs, temperature=cfg["table2_temperature"]).items():
            write_json(folder / f"{correction}.json", row)
    labels = correction_labels(cfg, ctx.runs["correction"])
    return {"table2": make_table2(ctx.runs, temperature=cfg["table2_temperature"], paper_table2=paper["table2"],
                                  labels=labels),
            "table3": make_table3(ctx.runs, rows=cfg["table3_rows"], quoted=paper["table3_quoted"],
                                  paper_ours=paper["table3_ours"])}


# ---------------------------------------------------------------- Fig. 3
def fig3_data(runs: pd.DataFrame, *, loss: str, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Mean ± sd over seeds of Avg.BC and Dev.A per (correction, T) of the `loss` runs, the correction by its label
    (`labels`: correction -> label; its own name where none)."""
    labels = labels or {}
    sel = runs[runs["loss"] == loss]
    rows = []
    for (corr, t), g in sel.groupby(["correction", "temperature"]):
        one_per_seed(runs, g, f"correction {corr}, T={float(t):g}, loss {loss}")  # never pooled over further axes
        for name in ("Avg.BC", "Dev.A"):
            mean, sd, n = _agg(g[METRICS[name]])
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


# ---------------------------------------------------------------- Fig. 2
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


# ---------------------------------------------------------------- summaries
def dvc_metrics(runs: pd.DataFrame, *, temperature: float) -> dict[str, dict]:
    """What `dvc metrics show` prints: one row per correction (results/metrics/<correction>.json), flat keys,
    accuracies in % (mean over seeds, 2 decimals): Dev.A and Avg.BC per loss at Table 2's T, and per loss
    the T with the best mean Avg.BC and that Avg.BC."""
    out: dict[str, dict] = {}
    for corr, g in runs.groupby("correction", sort=False):
        row: dict = {}
        for loss, gl in g.groupby("loss"):
            at = gl[np.isclose(gl["temperature"].astype(float), float(temperature))]
            if len(at):
                row[f"dev_a_{loss}_T{temperature:g}"] = round(100.0 * float(at["acc_a"].mean()), 2)
                row[f"avg_bc_{loss}_T{temperature:g}"] = round(100.0 * float(at["avg_bc"].mean()), 2)
            by_t = gl.groupby("temperature")["avg_bc"].mean()
            if by_t.notna().any():
                row[f"best_T_{loss}"] = float(by_t.idxmax())
                row[f"best_avg_bc_{loss}"] = round(100.0 * float(by_t.max()), 2)
        row["runs"] = int(len(g))
        out[str(corr)] = row
    return out


def summary_metrics(runs: pd.DataFrame) -> dict:
    """The summary `dvc metrics show` prints, per correction and loss (accuracies as fractions, mean over
    seeds): Dev.A and Avg.BC at the lowest T that ran, and the T with the best mean Avg.BC."""
    out: dict = {"n_runs": int(len(runs))}
    for (corr, loss), g in runs.groupby(["correction", "loss"]):
        tmin = g["temperature"].min()
        at = g[g["temperature"] == tmin]
        by_t = g.groupby("temperature")["avg_bc"].mean()
        out.setdefault(corr, {})[loss] = {
            f"avg_bc_T{tmin:g}": float(at["avg_bc"].mean()),
            f"acc_a_T{tmin:g}": float(at["acc_a"].mean()),
            "best_avg_bc": float(by_t.max()),
            "best_T": float(by_t.idxmax()),
            "n_seeds_T{:g}".format(tmin): int(at["seed"].nunique()),
        }
    if runs["avg_bc"].notna().any():
        best = runs.loc[runs["avg_bc"].idxmax()]
        out["best_run"] = {"correction": str(best["correction"]), "loss": str(best["loss"]),
                           "temperature": float(best["temperature"]), "seed": int(best["seed"]),
                           "avg_bc": float(best["avg_bc"]), "acc_a": float(best["acc_a"])}
    return out
