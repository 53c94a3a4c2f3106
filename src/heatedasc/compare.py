"""Does a run reproduce the committed reference? `heatedasc compare` answers with one of three verdicts.

The reference is the summary the repository carries (results/metrics.json as git's HEAD has it, or any
file or git revision given). Every number of the two summaries is compared:

* identical — every number equal to the last digit. Expected wherever every run was pinned (cpu.kernels avx2,
  heatedasc.pinning) and trained on a CPU: the same bytes on any x86-64 CPU with AVX2, Intel or AMD (the
  pipeline does not use MKL on the CPU, the one library that follows its pin on Intel CPUs only). There,
  anything but identical is *different*: other packages, code, data or configuration;
* within the demo's resolution — where bit-identity is not expected (cpu.kernels native, a GPU — docs/gpu.md —,
  or no provenance to tell): every count equal and every accuracy within
  what the demo's test set can resolve. A retrained model's accuracy on n test clips moves by sampling alone,
  so each number's tolerance is 3 standard errors of the difference of two such accuracies,
  3·√(2·p(1−p)/(n·s)) (p the reference value, n the test clips behind the number, s the seeds averaged), and at
  least one clip (one clip of n is 100/n pp). Derived from the test set, not measured on one machine;
* different — anything else (exit status 3).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, cast

from heatedasc.runkey import find_runs

SUMMARY = Path("results") / "metrics.json"
ACCURACY_KEYS = ("avg_bc", "acc_a", "acc_b", "acc_c", "acc_overall")  # fractions in 0-1: compared in pp
# The devices whose test clips an accuracy counts.
ACCURACY_DEVICES = {"acc_a": ("a",), "acc_b": ("b",), "acc_c": ("c",), "avg_bc": ("b", "c"),
                    "acc_overall": ("a", "b", "c")}
Z = 3.0  # standard errors a faithful retrained run may move a number
# Which run or which T is best: argmaxes that another CPU may flip between near-equal candidates (their
# accuracies are still held to their tolerance).
ARGMAX_KEYS = ("best_run.correction", "best_run.loss", "best_run.temperature", "best_run.seed", ".best_T")


@dataclass
class Difference:
    key: str
    reference: object
    current: object
    points: float | None  # |difference| in percentage points for accuracies; None for exact-only values
    clip_pp: float | None = None  # what one test clip moves this number, in pp
    tolerance_pp: float | None = None  # the demo's resolution for this number


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


def _leaves(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _accuracy_name(key: str) -> str | None:
    """'avg_bc' for 'ref_abc.focal.avg_bc_T1', 'ref_abc.focal.best_avg_bc' or 'best_run.avg_bc'; else None."""
    last = key.rsplit(".", 1)[-1]
    for name in ACCURACY_KEYS:
        if last == name or last.startswith(name + "_") or last == f"best_{name}":
            return name
    return None


def _seeds(key: str, summary: Mapping) -> int:
    """Seeds averaged in a number: its sibling n_seeds_T<t> (the fewest for best_*), 1 for a single run."""
    prefix, last = key.rsplit(".", 1) if "." in key else ("", key)
    siblings = {k: v for k, v in summary.items() if k.startswith(prefix + ".n_seeds_T")}
    match = re.search(r"_T([0-9.]+)$", last)
    if match:
        value = summary.get(f"{prefix}.n_seeds_T{match.group(1)}")
        return int(value) if isinstance(value, int) and value > 0 else 1
    if last.startswith("best_") and siblings:
        return max(1, min(int(v) for v in siblings.values() if isinstance(v, int)))
    return 1


def resolution(key: str, reference: float, n_test: Mapping[str, int] | None, seeds: int = 1
               ) -> tuple[float | None, float | None]:
    """(one clip, tolerance) in percentage points for an accuracy `key` with value `reference`, or (None, None)
    when the test-set sizes are unknown."""
    name = _accuracy_name(key)
    if name is None or not n_test:
        return None, None
    sizes = [int(n_test.get(d, 0)) for d in ACCURACY_DEVICES[name]]
    if min(sizes) <= 0:
        return None, None
    if name == "avg_bc":  # the mean of acc_b and acc_c
        clip = 100.0 / (2 * min(sizes)) / seeds
        n_eff = 4.0 / sum(1.0 / n for n in sizes)
    else:
        clip = 100.0 / sum(sizes) / seeds
        n_eff = float(sum(sizes))
    p = min(max(float(reference), 1.0 / n_eff), 1.0 - 1.0 / n_eff)
    tolerance = Z * 100.0 * math.sqrt(2.0 * p * (1.0 - p) / (n_eff * seeds))
    return clip, max(clip, tolerance)


def differences(reference: Mapping, current: Mapping, n_test: Mapping[str, int] | None = None) -> list[Difference]:
    ref, cur = _leaves(reference), _leaves(current)
    out = []
    for key in sorted(set(ref) | set(cur)):
        a, b = ref.get(key, "<absent>"), cur.get(key, "<absent>")
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            continue
        numeric = isinstance(a, (int, float)) and isinstance(b, (int, float))
        accuracy = numeric and _accuracy_name(key) is not None
        points = abs(float(a) - float(b)) * 100.0 if accuracy else None
        clip, tolerance = resolution(key, float(a), n_test, _seeds(key, ref)) if accuracy else (None, None)
        out.append(Difference(key, a, b, points, clip, tolerance))
    return out


def _is_argmax(key: str) -> bool:
    return key.startswith(ARGMAX_KEYS) or key.endswith(ARGMAX_KEYS)


def verdict(diffs: list[Difference], identity_expected: bool | None) -> str:
    """identical | within (only where identity is not expected) | different."""
    if not diffs:
        return "identical"
    if identity_expected is not True and all(
        # points is set wherever tolerance_pp is (both come from an accuracy: differences())
        (d.tolerance_pp is not None and cast(float, d.points) <= d.tolerance_pp + 1e-9) or _is_argmax(d.key)
        for d in diffs
    ):
        return "within"
    return "different"


# ------------------------------------------------------------------------------ what the run promises
def evaluation_sizes(results_dir: str | Path) -> dict[str, int] | None:
    """Test clips per device ({'a': 100, 'b': 40, 'c': 40}) from a run's metrics.json, or None."""
    for path in find_runs(results_dir, "metrics.json"):
        try:
            n_test = json.loads(path.read_text()).get("n_test")
        except (OSError, ValueError):
            continue
        if isinstance(n_test, Mapping) and n_test:
            return {str(k): int(v) for k, v in n_test.items()}
    return None


def identity_expected(results_dir: str | Path) -> tuple[bool | None, str]:
    """Whether the runs under results_dir should equal a pinned reference bit for bit, and why (from their
    provenance records: the stable one beside each run, the volatile one in logs/provenance/)."""
    from heatedasc.provenance import load_volatile

    results_dir = Path(results_dir)
    records = find_runs(results_dir, "provenance.json")
    if not records:
        return None, "no training-run provenance records under " + str(results_dir / "runs")
    for record in records:
        try:
            stable = json.loads(record.read_text())
        except (OSError, ValueError):
            return None, f"{record} is unreadable"
        cpu = stable.get("cpu") or {}
        if cpu.get("kernels") != "avx2":
            return False, (f"{record.parent} ran with cpu.kernels {cpu.get('kernels')!r}: each library's fastest "
                           "kernels for that CPU, which round differently on another CPU")
        volatile = load_volatile(record, results_dir.resolve().parent)
        if not volatile:
            return None, (f"the volatile provenance of {record.parent} (logs/provenance/) is not here, so where it "
                          "trained is unknown")
        # the device is a speed-only setting (execution.train.device): kept in the volatile record, with the host
        device = (volatile.get("execution") or {}).get("device", "auto")
        host = volatile.get("host") or {}
        if device == "cuda" or (device == "auto" and host.get("cuda_available")):
            return False, f"{record.parent} trained on a GPU, whose kernels are not bit-exact across GPUs (docs/gpu.md)"
    return True, ("every run was pinned (cpu.kernels avx2) and trained on a CPU, so the numbers must equal a pinned "
                  "reference to the last digit on any x86-64 CPU with AVX2")


# ------------------------------------------------------------------------------------------ the report
def report(diffs: list[Difference], result: str, *, reference_name: str, expected: bool | None, why: str) -> str:
    if result == "identical":
        return f"identical: every number equals {reference_name} to the last digit"
    worst = max((d.points for d in diffs if d.points is not None), default=0.0)
    lines = []
    for d in diffs:
        if d.points is None:
            size = "may differ (an argmax)" if _is_argmax(d.key) else "must be equal"
        elif d.tolerance_pp is None:
            size = f"{d.points:.2f} pp; test-set size unknown"
        else:
            assert d.clip_pp is not None  # resolution() gives a clip wherever it gives a tolerance
            size = (f"{d.points:.2f} pp = {d.points / d.clip_pp:.1f} clip(s) of {d.clip_pp:.2f} pp; "
                    f"tolerance {d.tolerance_pp:.2f} pp")
        lines.append(f"  {d.key}: {d.reference!r} -> {d.current!r} ({size})")
    if result == "within":
        head = (f"within the demo's resolution: {len(diffs)} number(s) differ from {reference_name}, by at most "
                f"{worst:.2f} percentage points, each within what its test clips can resolve (3 standard errors of "
                f"a retrained model's accuracy, at least one clip); bit-identity is not expected here: {why}")
    elif expected is True:
        head = (f"different: {len(diffs)} number(s) differ from {reference_name}, by up to {worst:.2f} percentage "
                f"points, but identity was expected: {why}. Something else changed (packages, code, data or "
                "configuration): `git diff dvc.lock` names the first stage whose outputs differ")
    else:
        head = (f"different: {len(diffs)} number(s) differ from {reference_name}, by up to {worst:.2f} percentage "
                f"points: beyond the demo's resolution, or a count or setting differs ({why})")
    return "\n".join([head, *lines])


def compare(results_dir: str | Path, reference: str) -> tuple[str, str]:
    current_path = Path(results_dir) / "metrics.json"
    if not current_path.is_file():
        raise ValueError(f"{current_path} not found: run the pipeline (make demo / dvc repro) first")
    ref, name = load_reference(reference, results_dir)
    diffs = differences(ref, json.loads(current_path.read_text()), evaluation_sizes(results_dir))
    expected, why = identity_expected(results_dir)
    result = verdict(diffs, expected)
    return result, report(diffs, result, reference_name=name, expected=expected, why=why)
