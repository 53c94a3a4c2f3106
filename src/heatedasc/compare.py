"""Does a run reproduce the committed reference? `heatedasc compare` answers with one of three verdicts.

The reference is the summary the repository carries (results/metrics.json as git's HEAD has it, or any
file or git revision given). Every number of the two summaries is compared:

* identical — every number equal to the last digit: what the same machine gives (same CPU kernels, same
  package versions, the same seeds; measured bit-exact on repeated demos);
* within the spread of another CPU — every accuracy within `report.reference_tolerance_pp` percentage
  points and every count equal: what another processor gives (other vector kernels round differently, and
  8 short epochs amplify that into different argmaxes on a small test set; the tolerance is measured, see
  benchmarks/cpu_spread.py and docs/);
* different — anything else (exit status 3).
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

SUMMARY = Path("results") / "metrics.json"
ACCURACY_KEYS = ("avg_bc", "acc_a", "acc_b", "acc_c")  # fractions in 0-1: compared in percentage points
# Which run or which T is best: argmaxes that another CPU may flip between near-equal candidates (their
# accuracies are still held to the tolerance).
ARGMAX_KEYS = ("best_run.correction", "best_run.loss", "best_run.temperature", "best_run.seed", ".best_T")


@dataclass
class Difference:
    key: str
    reference: object
    current: object
    points: float | None  # |difference| in percentage points for accuracies; None for exact-only values


def load_reference(spec: str, results_dir: str | Path = "results") -> tuple[dict, str]:
    """A reference summary: 'git:REV' (results/metrics.json at that revision) or a file path."""
    if spec.startswith("git:"):
        rev = spec[4:] or "HEAD"
        summary = (Path(results_dir) / "metrics.json").resolve()
        rel = summary.as_posix()
        try:
            top = subprocess.run(["git", "-C", str(summary.parent), "rev-parse", "--show-toplevel"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            rel = summary.relative_to(Path(top).resolve()).as_posix()
            text = subprocess.run(["git", "-C", top, "show", f"{rev}:{rel}"], capture_output=True, text=True,
                                  check=True).stdout
        except (OSError, ValueError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ValueError(f"cannot read {rel} at git revision {rev}: {detail.strip()}") from None
        return json.loads(text), f"{rel} at {rev}"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"reference not found: {path}")
    return json.loads(path.read_text()), str(path)


def _leaves(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _is_accuracy(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return any(last == k or last.startswith(k + "_") or last == f"best_{k}" for k in ACCURACY_KEYS)


def differences(reference: Mapping, current: Mapping) -> list[Difference]:
    ref, cur = _leaves(reference), _leaves(current)
    out = []
    for key in sorted(set(ref) | set(cur)):
        a, b = ref.get(key, "<absent>"), cur.get(key, "<absent>")
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            continue
        numeric = isinstance(a, (int, float)) and isinstance(b, (int, float))
        points = abs(float(a) - float(b)) * 100.0 if numeric and _is_accuracy(key) else None
        out.append(Difference(key, a, b, points))
    return out


def _is_argmax(key: str) -> bool:
    return key.startswith(ARGMAX_KEYS) or key.endswith(ARGMAX_KEYS)


def verdict(diffs: list[Difference], tolerance_pp: float | None) -> str:
    if not diffs:
        return "identical"
    if tolerance_pp is not None and all(
        (d.points is not None and d.points <= tolerance_pp) or _is_argmax(d.key) for d in diffs
    ):
        return "within"
    return "different"


def report(diffs: list[Difference], result: str, *, reference_name: str, tolerance_pp: float | None) -> str:
    lines = []
    if result == "identical":
        lines.append(f"identical: every number equals {reference_name} to the last digit (as on the machine that "
                     "made the reference)")
        return "\n".join(lines)
    worst = max((d.points for d in diffs if d.points is not None), default=0.0)
    for d in diffs:
        size = f"{d.points:.2f} pp" if d.points is not None else "must be equal"
        lines.append(f"  {d.key}: {d.reference!r} -> {d.current!r} ({size})")
    if result == "within":
        lines.insert(0, f"within the spread of another CPU: {len(diffs)} number(s) differ from {reference_name}, "
                        f"by at most {worst:.2f} percentage points (tolerance {tolerance_pp:g} pp, measured across "
                        "CPU instruction sets); on the reference's own machine the numbers would be identical")
    else:
        tol = "no tolerance is set (report.reference_tolerance_pp)" if tolerance_pp is None \
            else f"tolerance {tolerance_pp:g} pp"
        lines.insert(0, f"different: {len(diffs)} number(s) differ from {reference_name}, by up to {worst:.2f} "
                        f"percentage points; {tol}")
    return "\n".join(lines)


def compare(results_dir: str | Path, reference: str, tolerance_pp: float | None) -> tuple[str, str]:
    current_path = Path(results_dir) / "metrics.json"
    if not current_path.is_file():
        raise ValueError(f"{current_path} not found: run the pipeline (make demo / dvc repro) first")
    ref, name = load_reference(reference, results_dir)
    diffs = differences(ref, json.loads(current_path.read_text()))
    result = verdict(diffs, tolerance_pp)
    return result, report(diffs, result, reference_name=name, tolerance_pp=tolerance_pp)
