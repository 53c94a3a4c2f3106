"""The paper's artefacts from per-run metrics: Table 2, Table 3, Fig. 3, Fig. 2 and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from heatedasc.fileio import atomic_path, write_text

RUN_KEYS = ("correction", "temperature", "loss", "seed", "acc_a", "acc_b", "acc_c", "avg_bc",
            "params_trainable", "params_keras", "best_epoch", "selection")
LABELS = {"ref_abc": "Ref.ABC", "ref_bc": "Ref.BC", "none": "NoCorrection"}
METRICS = {"Dev.A": "acc_a", "Dev.B": "acc_b", "Dev.C": "acc_c", "Avg.BC": "avg_bc"}
PAPER_KEYS = {"Dev.A": "dev_a", "Dev.B": "dev_b", "Dev.C": "dev_c", "Avg.BC": "avg_bc"}


def load_runs(metrics_paths) -> pd.DataFrame:
    """One row per run; accuracies stay fractions here and become % in the tables."""
    paths = list(metrics_paths)
    if not paths:
        raise ValueError("no training runs found: the report needs at least one results/runs/.../metrics.json")
    rows = []
    for p in paths:
        try:
            m = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: unreadable metrics file ({exc})") from exc
        missing = [k for k in RUN_KEYS if k not in m]
        if missing:
            raise ValueError(f"{p}: metrics file lacks key(s) {', '.join(missing)}")
        row = {k: m[k] for k in RUN_KEYS}
        row.update(temperature=float(m["temperature"]), seed=int(m["seed"]), acc_overall=m.get("acc_overall"),
                   ece=m.get("ece"), selection_note=m.get("selection_note"), confusion=m.get("confusion"),
                   class_acc=m.get("class_acc"), path=str(p), run_dir=str(Path(p).parent))
        rows.append(row)
    return pd.DataFrame(rows)


def select_cell(runs: pd.DataFrame, *, correction: str, temperature, loss: str) -> pd.DataFrame:
    """The runs (one per seed) of one (correction, T, loss) cell; empty if none has run."""
    return runs[(runs["correction"] == correction) & (runs["loss"] == loss)
                & np.isclose(runs["temperature"].astype(float), float(temperature))]


def selection_note(runs: pd.DataFrame) -> str:
    """One paragraph on how the epochs were chosen; says so loudly when the test set chose them."""
    selections = sorted(set(runs["selection"].astype(str)))
    notes = sorted({str(n) for n in runs["selection_note"].dropna()}) if "selection_note" in runs else []
    head = f"Model selection: train.selection={', '.join(selections)}"
    if len(selections) > 1:
        head += " (mixed across runs)"
    if "test" in selections:
        head += ". The paper's `test` selection leaks the test set"
        if not notes:
            head += (": fold1_evaluate chose the epoch (and drove the learning-rate schedule), so the accuracies "
                     "are optimistic")
    return head + "." + "".join(" " + n for n in notes)


def _agg(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().astype(float) * 100.0
    n = len(v)
    return (float(v.mean()) if n else np.nan, float(v.std(ddof=1)) if n > 1 else np.nan, n)


def make_table2(runs: pd.DataFrame, *, temperature, paper_table2: dict) -> pd.DataFrame:
    """Rows per correction; per loss × (Dev.A, Avg.BC): mean, sd (ddof=1), n seeds, paper, diff (%)."""
    rows = []
    for corr, label in LABELS.items():
        row = {"correction": label}
        for loss in ("focal", "ce"):
            cell = select_cell(runs, correction=corr, temperature=temperature, loss=loss)
            for name in ("Dev.A", "Avg.BC"):
                mean, sd, n = _agg(cell[METRICS[name]])
                paper = paper_table2.get(loss, {}).get(corr, {}).get(PAPER_KEYS[name], np.nan)
                prefix = f"{loss}_{name}"
                row.update({f"{prefix}_mean": mean, f"{prefix}_sd": sd, f"{prefix}_n": n,
                            f"{prefix}_paper": paper, f"{prefix}_diff": mean - paper})
        rows.append(row)
    return pd.DataFrame(rows)


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
    df["params"] = pd.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
                             for v in df["params"]], dtype="Int64")
    return df


def _isnan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v))


def format_cell(mean, sd=np.nan, n=None) -> str:
    """"mean ± sd (n)" in %; a reproduction cell without runs is "missing" (never 0); a blank quoted cell "–"."""
    if n is not None and not _isnan(n) and int(n) == 0:
        return "missing"
    if _isnan(mean):
        return "–"
    s = f"{mean:.1f}"
    if not _isnan(sd):
        s += f" ± {sd:.1f}"
    return s + (f" ({int(n)})" if n is not None and not _isnan(n) else "")


def _format_plain(value) -> str:
    if _isnan(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def _format_paper(v) -> str:
    """A published number as printed: 72.0 stays 72.0, 70.27 keeps its two decimals."""
    return f"{v:.1f}" if round(float(v), 1) == float(v) else f"{v:g}"


def table_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of a result table: per metric group the reproduction ("mean ± sd (n)"),
    the paper's value and the difference (reproduction − paper, percentage points)."""
    groups = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]
    first = [c for c in df.columns if not any(c.startswith(g + "_") for g in groups)]
    header = list(first)
    for g in groups:
        header += [g.replace("_", " "), f"{g.replace('_', ' ')} paper", "Δ"]
    rows = []
    for _, r in df.iterrows():
        ours = r.get("source") == "this reproduction"
        cells = ["missing" if ours and c == "params" and _isnan(r[c]) else _format_plain(r[c]) for c in first]
        for g in groups:
            n = r.get(f"{g}_n")
            cells.append(format_cell(r[f"{g}_mean"], r.get(f"{g}_sd", np.nan), None if _isnan(n) else n))
            paper, diff = r.get(f"{g}_paper"), r.get(f"{g}_diff")
            cells.append("–" if _isnan(paper) else _format_paper(paper))
            cells.append("–" if _isnan(diff) else f"{diff:+.1f}")
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return lines


def write_table(df: pd.DataFrame, csv_path, md_path, *, title: str, selection: str | None = None) -> None:
    """CSV (every column, missing cells empty with n = 0) and Markdown ("mean ± sd (n seeds)", the paper's
    value and the difference beside each cell). `selection` is the selection note printed under it."""
    out = df.copy()
    for c in out.columns:
        if c.endswith("_n"):
            out[c] = pd.array([None if _isnan(v) else int(v) for v in out[c]], dtype="Int64")
    with atomic_path(csv_path) as tmp:
        out.to_csv(tmp, index=False)
    header, rows = table_cells(df)
    lines = [f"# {title}", ""] + markdown_table(header, rows)
    lines += ["", "Accuracies in %: mean ± sd over seeds (number of seeds); \"missing\" = no run of that cell; "
              "paper = the published value (SPEC §9); Δ = reproduction − paper, in percentage points."]
    if "source" in df.columns and (df["source"] == "quoted from paper").any():
        lines.append("Rows with source \"quoted from paper\" are other systems' numbers as the paper quotes them; "
                     "they were not rerun here.")
    if selection:
        lines += ["", selection]
    write_text(md_path, "\n".join(lines) + "\n")


def fig3_data(runs: pd.DataFrame, *, loss: str) -> pd.DataFrame:
    sel = runs[runs["loss"] == loss]
    rows = []
    for (corr, t), g in sel.groupby(["correction", "temperature"]):
        for name in ("Avg.BC", "Dev.A"):
            mean, sd, n = _agg(g[METRICS[name]])
            rows.append({"correction": LABELS.get(corr, corr), "temperature": t, "metric": name,
                         "mean": mean, "sd": sd, "n": n})
    return pd.DataFrame(rows, columns=["correction", "temperature", "metric", "mean", "sd", "n"])


def plot_fig3(runs, out_png, out_csv, *, out_pdf=None, loss: str, paper_best: dict | None = None,
              paper_best_label: str = "paper best") -> None:
    """Accuracy against T per correction, mean ± sd band over seeds. `paper_best` (SPEC §9, %) holds
    `temperature`, `avg_bc` and `dev_a` of the paper's best row, drawn as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = fig3_data(runs, loss=loss)
    with atomic_path(out_csv) as tmp:
        data.to_csv(tmp, index=False)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    palette = dict(zip(LABELS.values(), sns.color_palette("colorblind", 3)))
    for ax, name in zip(axes, ("Avg.BC", "Dev.A")):
        d = data[data["metric"] == name]
        for corr, g in d.groupby("correction"):
            g = g.sort_values("temperature")
            ax.plot(g["temperature"], g["mean"], marker="o", label=corr, color=palette.get(corr))
            sd = g["sd"].fillna(0.0)
            ax.fill_between(g["temperature"], g["mean"] - sd, g["mean"] + sd, alpha=0.2, color=palette.get(corr))
        for label in LABELS.values():  # a correction with no run is named as missing, never drawn as 0
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
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    if out_pdf:
        with atomic_path(out_pdf) as tmp:
            fig.savefig(tmp, format="pdf")
    plt.close(fig)


def _pca_fit(x: np.ndarray):
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2].T


def plot_fig2(embedding_files: dict, out_png, *, class_names) -> None:
    """PCA (fitted on each T's train embeddings) of GAP outputs: row 1 test, row 2 train, per T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


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
