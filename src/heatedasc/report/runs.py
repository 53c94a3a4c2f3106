"""The training runs a report reads: finding them, their metrics, predictions and embeddings, the display
labels of the corrections, selecting the runs (one per seed) of a (correction, T, loss) cell and their
mean ± sd over seeds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from heatedasc.runkey import CORE_NAMES, RUNS_DIR, find_runs, parse_run_dir
from heatedasc.tau import SCENES

RUN_KEYS = ("correction", "temperature", "loss", "seed", "acc_a", "acc_b", "acc_c", "avg_bc",
            "params_trainable", "params_keras", "best_epoch", "selection")
METRICS = {"Dev.A": "acc_a", "Dev.B": "acc_b", "Dev.C": "acc_c", "Avg.BC": "avg_bc"}


def class_names() -> list[str]:
    return list(SCENES)


def correction_labels(report_cfg: Mapping, present: Iterable[str] = ()) -> dict[str, str]:
    """The display label of each correction, in order: those `report.corrections` names (its `label`, or the
    correction's own name), then any other correction in `present` under its own name, so that a correction
    with runs is always shown, never dropped for want of a label."""
    configured = report_cfg.get("corrections") or {}
    labels = {str(c): str((spec or {}).get("label") or c) for c, spec in configured.items()}
    for c in present:
        labels.setdefault(str(c), str(c))
    return labels


def correction_colors(report_cfg: Mapping, labels: Mapping[str, str], default: Iterable) -> dict[str, object]:
    """label -> colour of each correction in `labels`: its `report.corrections` `color`, else the next colour of
    `default` (a palette with at least len(labels) colours) by the correction's position."""
    configured = report_cfg.get("corrections") or {}
    return {label: (configured.get(c) or {}).get("color") or fallback
            for (c, label), fallback in zip(labels.items(), default)}


def discover_runs(results_dir: str | os.PathLike = "results") -> list[Path]:
    """Every metrics.json of a finished run under `results_dir` (runs/<correction>/T<T>/<loss>/seed<seed>/, and one
    `<axis>=<value>` folder below per further sweep axis: heatedasc.runkey)."""
    found = find_runs(results_dir)
    if not found:
        raise ValueError(f"no training runs found under {Path(results_dir) / RUNS_DIR} (looked for "
                         "<correction>/T<T>/<loss>/seed<seed>/metrics.json); the report needs at least one finished "
                         "run — run `snakemake train_all` first")
    return found


def extra_axes(runs: pd.DataFrame) -> list[str]:
    """The sweep axes of `runs` beyond the paper's four (columns load_runs added from the run folders)."""
    return [c for c in runs.attrs.get("extra_axes", []) if c in runs.columns]


def load_runs(metrics_paths) -> pd.DataFrame:
    """One row per run; accuracies stay fractions here and become % in the tables."""
    paths = list(metrics_paths)
    if not paths:
        raise ValueError("no training runs found: the report needs at least one results/runs/.../metrics.json")
    rows = []
    extras: dict[str, None] = {}
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
        key = parse_run_dir(Path(p).parent)  # further sweep axes: named by the run folder (heatedasc.runkey)
        for name, value in (key.values().items() if key is not None else ()):
            if name not in CORE_NAMES:
                row[name] = value
                extras[name] = None
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["extra_axes"] = list(extras)
    return frame


def select_cell(runs: pd.DataFrame, *, correction: str, temperature, loss: str, **axes) -> pd.DataFrame:
    """The runs (one per seed) of one (correction, T, loss[, further axes]) cell; empty if none has run.
    Runs of one seed that differ in a further sweep axis not given in `axes` are never pooled as if they
    were seeds: that is an error naming the axis."""
    cell = runs[(runs["correction"] == correction) & (runs["loss"] == loss)
                & np.isclose(runs["temperature"].astype(float), float(temperature))]
    for name, value in axes.items():
        if name not in cell.columns:
            raise ValueError(f"no run has the sweep axis {name!r}")
        cell = cell[cell[name] == value]
    return one_per_seed(runs, cell, f"correction {correction}, T={float(temperature):g}, loss {loss}", pinned=axes)


def one_per_seed(runs: pd.DataFrame, cell: pd.DataFrame, what: str, pinned: Iterable[str] = ()) -> pd.DataFrame:
    """`cell` (rows of `runs`), checked to hold one run per seed: runs that differ in a further sweep axis of
    `runs` not `pinned` are an error naming the axis, never pooled as if they were seeds."""
    spread = [a for a in extra_axes(runs) if a not in set(pinned) and cell[a].nunique(dropna=False) > 1]
    if spread:
        raise ValueError(
            f"the runs of {what} differ in the sweep axis/axes {', '.join(spread)} ({len(cell)} runs); this "
            f"artefact shows one run per seed, so it needs one value of {', '.join(spread)}")
    return cell


def seed_stats(values: pd.Series) -> tuple[float, float, int]:
    """A metric of the runs of one cell (fractions) in %: mean, sd over seeds (ddof=1; NaN below 2) and n."""
    v = values.dropna().astype(float) * 100.0
    n = len(v)
    return (float(v.mean()) if n else np.nan, float(v.std(ddof=1)) if n > 1 else np.nan, n)


def load_predictions(run_dir) -> dict | None:
    """probs = softmax(z/T) and labels of one run's test set (predictions.npz); None if the file is absent."""
    f = Path(run_dir) / "predictions.npz"
    if not f.is_file():
        return None
    with np.load(f) as d:
        return {"probs": d["probs"].astype(np.float64), "labels": d["labels"].astype(np.int64),
                "devices": d["devices"].astype(str)}


def load_outcomes(run_dir) -> pd.DataFrame | None:
    """Per test clip of one run (predictions.npz): file name, device and whether argmax z hit the label — the
    clips behind its accuracies; None if the file is absent."""
    f = Path(run_dir) / "predictions.npz"
    if not f.is_file():
        return None
    with np.load(f) as d:
        scores = d["logits"] if "logits" in d.files else d["probs"]  # softmax(z/T) keeps the argmax of z
        return pd.DataFrame({"filename": d["filenames"].astype(str), "device": d["devices"].astype(str),
                             "correct": scores.argmax(axis=1) == d["labels"].astype(np.int64)})


def fig2_embeddings(runs: pd.DataFrame, report_cfg: Mapping) -> dict[float, str | None]:
    """Embeddings of the Fig. 2 runs among `runs`, per configured T (None where that T has not run)."""
    files = {}
    for t in report_cfg["fig2_temperatures"]:
        cell = select_cell(runs, correction=report_cfg["fig2_correction"], temperature=t, loss=report_cfg["fig2_loss"])
        cell = cell[cell["seed"].astype(int) == int(report_cfg["fig2_seed"])]
        f = Path(cell["run_dir"].iloc[0]) / "embeddings.npz" if len(cell) else None
        files[float(t)] = str(f) if f is not None and f.is_file() else None
    return files


def grid_axes(config: Mapping, runs: pd.DataFrame | None = None) -> dict:
    """The configured sweep axes, widened by whatever runs exist (so nothing that ran is hidden)."""
    sweep = {k: list(config["sweep"][k]) for k in ("correction", "temperature", "loss")}
    if runs is not None:
        for k in sweep:
            extra = [v for v in sorted(set(runs[k])) if v not in sweep[k]
                     and not (k == "temperature" and any(float(v) == float(t) for t in sweep[k]))]
            sweep[k] += extra
    return sweep


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
