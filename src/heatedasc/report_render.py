"""Render every report artefact from whatever runs exist: the one code path behind both the Snakemake
report rules (workflow/scripts/*.py call the render_* functions) and `heatedasc report`.

`heatedasc report [--results results] [--configfile params.yaml config/smoke.yaml ...]` globs
results/runs/*/T*/*/seed*/metrics.json, so a partial sweep (after failed jobs) can still be reported;
cells without runs are shown as "missing", never as 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pandas as pd

from heatedasc import report as rp
from heatedasc import report_extras as rx

# Artefact -> path relative to the results folder. The same names as the keys of PATHS in
# workflow/rules/common.smk (tests/test_report.py checks that the two agree).
ARTEFACTS = {
    "table2": "tables/table2.csv",
    "table2_md": "tables/table2.md",
    "table3": "tables/table3.csv",
    "table3_md": "tables/table3.md",
    "summary": "metrics.json",
    "fig3": "figures/fig3.png",
    "fig3_pdf": "figures/fig3.pdf",
    "fig3_csv": "figures/fig3.csv",
    "fig2": "figures/fig2.png",
    "calibration": "tables/calibration.csv",
    "calibration_md": "tables/calibration.md",
    "reliability": "figures/reliability.png",
    "confusion": "figures/confusion.png",
    "confusion_csv": "tables/confusion.csv",
    "significance": "tables/significance.csv",
    "significance_md": "tables/significance.md",
    "report_html": "report.html",
}
RUN_GLOB = "runs/*/T*/*/seed*/metrics.json"


def class_names() -> list[str]:
    from heatedasc.tau import SCENES

    return list(SCENES)


def discover_runs(results_dir: str | os.PathLike = "results") -> list[Path]:
    """Every metrics.json of a finished run under `results_dir` (runs/<correction>/T<T>/<loss>/seed<seed>/)."""
    found = sorted(Path(results_dir).glob(RUN_GLOB))
    if not found:
        raise ValueError(f"no training runs found under {Path(results_dir) / 'runs'} (looked for {RUN_GLOB}); "
                         "the report needs at least one finished run — run `snakemake train_all` first")
    return found


def _paper_best(cfg: Mapping, paper: Mapping) -> tuple[dict | None, str]:
    """The paper's best row of Table 3 (highest Avg.BC among the configured rows) for Fig. 3's star."""
    rows = [r for r in cfg["table3_rows"] if r["name"] in paper.get("table3_ours", {})
            and r["loss"] == cfg["fig3_loss"]]
    if not rows:
        return None, ""
    best = max(rows, key=lambda r: paper["table3_ours"][r["name"]]["avg_bc"])
    values = dict(paper["table3_ours"][best["name"]], temperature=float(best["temperature"]))
    return values, f"paper best ({best['name']})"


def render_tables(runs: pd.DataFrame, cfg: Mapping, paper: Mapping, out: Mapping) -> None:
    note = rp.selection_note(runs)
    t2 = cfg["table2_temperature"]
    table2 = rp.make_table2(runs, temperature=t2, paper_table2=paper["table2"])
    rp.write_table(table2, out["table2"], out["table2_md"], title=f"Table 2: accuracy (%) at T = {t2:g}",
                   selection=note)
    table3 = rp.make_table3(runs, rows=cfg["table3_rows"], quoted=paper["table3_quoted"],
                            paper_ours=paper["table3_ours"])
    rp.write_table(table3, out["table3"], out["table3_md"],
                   title="Table 3: comparison on the test set (fold1_evaluate)", selection=note)
    from heatedasc.fileio import write_json

    write_json(out["summary"], rp.summary_metrics(runs))


def render_fig3(runs: pd.DataFrame, cfg: Mapping, paper: Mapping, out: Mapping) -> None:
    best, label = _paper_best(cfg, paper)
    rp.plot_fig3(runs, out["fig3"], out["fig3_csv"], out_pdf=out.get("fig3_pdf"), loss=cfg["fig3_loss"],
                 paper_best=best, paper_best_label=label)


def fig2_files(runs: pd.DataFrame, cfg: Mapping) -> dict[float, str | None]:
    """Embeddings of the Fig. 2 runs among `runs` (None where that T has not run)."""
    files = {}
    for t in cfg["fig2_temperatures"]:
        cell = rp.select_cell(runs, correction=cfg["fig2_correction"], temperature=t, loss=cfg["fig2_loss"])
        cell = cell[cell["seed"].astype(int) == int(cfg["fig2_seed"])]
        f = Path(cell["run_dir"].iloc[0]) / "embeddings.npz" if len(cell) else None
        files[float(t)] = str(f) if f is not None and f.is_file() else None
    return files


def render_fig2(files: Mapping[float, str | None], out: Mapping) -> None:
    rp.plot_fig2(dict(files), out["fig2"], class_names=class_names())


def render_calibration(runs: pd.DataFrame, cfg: Mapping, sweep: Mapping, out: Mapping) -> None:
    table = rx.calibration_table(runs)
    rx.write_calibration(table, out["calibration"], out["calibration_md"], corrections=sweep["correction"],
                         temperatures=sweep["temperature"], losses=sweep["loss"])
    rx.plot_reliability(runs, out["reliability"], loss=cfg["calibration_loss"], corrections=sweep["correction"],
                        temperatures=sweep["temperature"])


def render_confusion(runs: pd.DataFrame, cfg: Mapping, out: Mapping) -> None:
    names = class_names()
    sums = rx.confusion_sums(runs, list(cfg["confusion_runs"]), len(names))
    from heatedasc.fileio import atomic_path

    with atomic_path(out["confusion_csv"]) as tmp:
        rx.confusion_frame(sums, names).to_csv(tmp, index=False)
    rx.plot_confusion(sums, out["confusion"], class_names=names)


def render_significance(runs: pd.DataFrame, cfg: Mapping, out: Mapping) -> None:
    conf = float(cfg["confidence"])
    table = rx.significance_table(runs, list(cfg["comparisons"]), confidence=conf)
    rx.write_significance(table, out["significance"], out["significance_md"], confidence=conf)


def render_html(runs: pd.DataFrame, config: Mapping, out: Mapping, *, provenance_files, origin: str) -> None:
    from heatedasc.report_html import write_report

    write_report(out["report_html"], artefacts=out, config=config, selection=rp.selection_note(runs),
                 provenance_files=provenance_files, n_runs=len(runs), origin=origin)


def render_all(results_dir: str | os.PathLike, config: Mapping) -> dict[str, str]:
    """Every artefact from the runs found under `results_dir`; returns artefact -> path written."""
    results = Path(results_dir)
    runs = rp.load_runs(discover_runs(results))
    cfg, paper = config["report"], config["paper"]
    sweep = grid_axes(config, runs)
    out = {k: str(results / v) for k, v in ARTEFACTS.items()}
    render_tables(runs, cfg, paper, out)
    render_fig3(runs, cfg, paper, out)
    render_fig2(fig2_files(runs, cfg), out)
    render_calibration(runs, cfg, sweep, out)
    render_confusion(runs, cfg, out)
    render_significance(runs, cfg, out)
    prov = [str(Path(d) / "provenance.json") for d in runs["run_dir"]]
    figures = dict(out, coefficient_plot=str(results / "figures" / "coefficients.png"))  # if the data stage ran
    render_html(runs, config, figures, provenance_files=prov,
                origin=f"`heatedasc report` from the {len(runs)} run(s) found under {results / 'runs'}")
    return out


def grid_axes(config: Mapping, runs: pd.DataFrame | None = None) -> dict:
    """The configured sweep axes, widened by whatever runs exist (so nothing that ran is hidden)."""
    sweep = {k: list(config["sweep"][k]) for k in ("correction", "temperature", "loss")}
    if runs is not None:
        for k in sweep:
            extra = [v for v in sorted(set(runs[k])) if v not in sweep[k]
                     and not (k == "temperature" and any(float(v) == float(t) for t in sweep[k]))]
            sweep[k] += extra
    return sweep


def load_config(configfiles) -> dict:
    from heatedasc.config import load_config as load

    return load(configfiles)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="heatedasc report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="the results folder (runs/ inside it; artefacts go there)")
    ap.add_argument("--configfile", nargs="+", default=["params.yaml"],
                    help="config files merged in order, as for snakemake (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.configfile)
        out = render_all(args.results, config)
    except ValueError as exc:
        print(f"report: {exc}")
        return 2
    for key, p in out.items():
        print(f"{key:16s} {p}")
    return 0
