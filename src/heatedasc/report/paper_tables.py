"""The paper's tables from the per-run metrics: Table 2 and Table 3 (tables/table2.csv, tables/table3.csv and
their Markdown), and the summary metrics beside them: results/metrics.json (what `heatedasc compare` checks) and
results/metrics/<correction>.json (what `dvc metrics show` prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from heatedasc.fileio import atomic_dir, write_json
from heatedasc.report.runs import METRICS, correction_labels, one_per_seed, seed_stats, select_cell, selection_note
from heatedasc.report.tables import TableDoc, format_cell, format_plain, format_published, integer_counts, isnan

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext

PAPER_KEYS = {"Dev.A": "dev_a", "Dev.B": "dev_b", "Dev.C": "dev_c", "Avg.BC": "avg_bc"}
ACCURACY_NOTE = ("Accuracies in %: mean ± sd over seeds (number of seeds); \"missing\" = no run of that cell; "
                 "paper = the published value (docs/reproduction.md §9); Δ = reproduction − paper, in percentage points.")
QUOTED_NOTE = ("Rows with source \"quoted from paper\" are other systems' numbers as the paper quotes them; "
               "they were not rerun here.")


def _count_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.endswith("_n")]


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
                mean, sd, n = seed_stats(cell[METRICS[name]])
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
            mean, sd, n = seed_stats(cell[METRICS[name]])
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
