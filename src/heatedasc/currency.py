"""Is a job's result current? The check that lets Snakemake's own rules decide reruns by content.

Snakemake reruns a job when an output is missing, when an input is newer than its outputs, or when the user forces
it (`-R`, `--forceall`, `--forcerun FILE`), and reruns everything downstream of a rerun job. All of that is kept:
every link between jobs is a plain input. What DVC and git change is the dates — `dvc pull`, `dvc checkout`, `git
checkout` and `dvc exp apply` restore files with fresh ones, in any order — so the dates alone cannot be trusted.
This module makes them true before Snakemake reads them, in the main Snakemake process, for each job of the DAG:

* current — the job's record (heatedasc.provenance, written by the job itself) matches what the job would read and
  write now: every output's content, the params (all but the speed-only `execution` block), the code (adapter
  script and library import closure), the CPU pinning, and every input's path and content. Its outputs are then
  re-dated, if needed, to just after its newest input (producers first), so Snakemake sees the order their content
  proves. Only files the job wrote are ever re-dated; inputs, such as a user's dataset, never are.
* out of date — anything differs. The job gets one extra input per difference, a small file under
  `.snakemake/heatedasc/why/<rule>/<wildcards>/` named after it (e.g. `params.train.epochs: 8 -> 20`), dated after
  its outputs: Snakemake reruns it, shows the difference as its reason, and reruns what follows.
* outputs missing — nothing to add: Snakemake reruns it anyway.

A job submitted to a cluster re-reads the Snakefile in its own process; there this module does nothing (the main
process decided), and the job records what it actually ran, whatever any plan said. With `--touch` (not a dry
run), the record of each job Snakemake touched is rewritten after the run to describe its current inputs and
outputs, marked `touched`, as the option promises to mark results current. `HEATEDASC_PLAN=<file>` makes a plan
append each decision to that file as one JSON line (what `heatedasc lineage` reads).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from heatedasc.codedeps import code_digests
from heatedasc.hashing import SNAKEMAKE_TIMESTAMP, digest, digest_many, remember
from heatedasc.provenance import RECORD_OUTPUT, local, portable, read_record, recorded_params

WHY_INPUT = "why"
STATE_DIR = Path(".snakemake") / "heatedasc"
WHY_DIR = STATE_DIR / "why"
PLAN_ENV = "HEATEDASC_PLAN"
MAX_REASONS = 8
REDATE_STEP_NS = 1_000_000  # 1 ms after the newest input
ABSENT = object()


@dataclass
class Decision:
    job: str
    rule: str
    wildcards: dict
    record: str
    state: str  # current | stale | missing
    reasons: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def job_name(rule: str, wildcards: Mapping) -> str:
    return f"{rule}({', '.join(f'{k}={v}' for k, v in wildcards.items())})" if wildcards else rule


# ------------------------------------------------------------------------ dates as Snakemake reads them


def input_mtime_ns(path: str) -> int:
    """An input's date as Snakemake 9 compares it: a folder's `.snakemake_timestamp` if it has one; a symlink's
    own date or its target's, whichever is newer."""
    st = os.stat(path, follow_symlinks=False)
    own = _dir_or_file_ns(path, st)
    if os.path.islink(path):
        return max(st.st_mtime_ns, _dir_or_file_ns(path, os.stat(path)))
    return own


def output_mtime_ns(path: str) -> int:
    """An output's date as Snakemake 9 compares it (a symlink's own date)."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_mtime_ns if os.path.islink(path) else _dir_or_file_ns(path, st)


def _dir_or_file_ns(path: str, st: os.stat_result) -> int:
    if os.path.isdir(path):
        try:
            return os.stat(os.path.join(path, SNAKEMAKE_TIMESTAMP)).st_mtime_ns
        except FileNotFoundError:
            pass
    return st.st_mtime_ns


def redate_output(path: str, ns: int) -> None:
    """Give an output the date `ns` as Snakemake reads it (never following a symlink into DVC's cache)."""
    if os.path.islink(path):
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
        return
    if os.path.isdir(path):
        stamp = os.path.join(path, SNAKEMAKE_TIMESTAMP)
        if os.path.exists(stamp):
            os.utime(stamp, ns=(ns, ns))
    os.utime(path, ns=(ns, ns))


# ----------------------------------------------------------------------------------- Snakemake glue


def _callable(item):
    """The function behind a rule's input or params item, or None (what Snakemake's apply_input_function does)."""
    from snakemake.io import AnnotatedString, _IOFile

    if isinstance(item, _IOFile):
        return getattr(item._file, "callable", None)
    if isinstance(item, AnnotatedString):
        return getattr(item, "callable", None)
    return item if callable(item) else None


def _call(func, wildcards: Mapping, what: str):
    import inspect

    from snakemake.io import Wildcards

    extra = list(inspect.signature(func).parameters)[1:]  # the first one receives the wildcards
    if extra:
        raise ValueError(f"{what}: a function of {extra} cannot be checked at planning; use a function of wildcards")
    return func(Wildcards(fromdict=dict(wildcards)))


def _flatten(value, wildcards: Mapping, what: str) -> list[str]:
    from snakemake.io import apply_wildcards

    func = _callable(value)
    if func is not None:
        return _flatten(_call(func, wildcards, what), wildcards, what)
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _flatten(v, wildcards, what)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _flatten(v, wildcards, what)]
    if value is None:
        return []
    return [apply_wildcards(str(value), dict(wildcards))]


def _named(files, wildcards: Mapping, what: str, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """A rule's input or output items as {name: [paths]} for `wildcards` (unnamed items under 'unnamed')."""
    named: dict[str, list[str]] = {}
    names = dict(files._names) if hasattr(files, "_names") else {}
    covered: set[int] = set()
    for name, (start, end) in names.items():
        end = start + 1 if end is None else end
        covered.update(range(start, end))
        if name in skip:
            continue
        named[name] = [p for i in range(start, end) for p in _flatten(files[i], wildcards, f"{what} {name}")]
    rest = [p for i, item in enumerate(files) if i not in covered for p in _flatten(item, wildcards, what)]
    if rest:
        named["unnamed"] = rest
    return named


def _params(rule, wildcards: Mapping) -> dict:
    """A rule's params for `wildcards`, as its job receives them."""
    return {k: (_call(f, wildcards, f"rule {rule.name} params {k}") if (f := _callable(v)) else v)
            for k, v in rule.params.items()}


def _script(rule) -> str:
    base = rule.basedir.get_path_or_uri(secret_free=True) if hasattr(rule.basedir, "get_path_or_uri") else rule.basedir
    return os.path.normpath(os.path.join(str(base), rule.script))


# ------------------------------------------------------------------------------------------- checks


def _diff_params(before: Any, now: Any, prefix: str = "params") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now), key=str):
            out += _diff_params(before.get(key, ABSENT), now.get(key, ABSENT), f"{prefix}.{key}")
        return out
    if before is not ABSENT and now is not ABSENT and json.dumps(before, sort_keys=True) == json.dumps(now, sort_keys=True):
        return []
    return [f"{prefix}: {_short(before)} -> {_short(now)}"]


def _short(v) -> str:
    text = "absent" if v is ABSENT else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _diff_digests(kind: str, before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        if key not in before:
            out.append(f"{kind} {key} new")
        elif key not in now:
            out.append(f"{kind} {key} gone")
        elif before[key] != now[key]:
            out.append(f"{kind} {key} changed")
    return out


def compare(record: Mapping, *, params: Mapping, code: Mapping, cpu: Mapping | None,
            inputs: Mapping[str, Mapping[str, str]], outputs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every difference between a job's record and what it would read and write now, in words."""
    reasons = []
    recorded_outputs = {p: d for group in record.get("outputs", {}).values() for p, d in group.items()}
    now_outputs = {p: d for group in outputs.values() for p, d in group.items()}
    for p in sorted(set(recorded_outputs) | set(now_outputs)):
        if p not in now_outputs:
            reasons.append(f"output {p} no longer made")
        elif recorded_outputs.get(p) != now_outputs[p]:
            reasons.append(f"output {p} changed since the job wrote it")
    reasons += _diff_params(record.get("params", {}), params)
    reasons += _diff_digests("code", record.get("code", {}), code)
    if cpu is not None:
        reasons += _diff_params(record.get("cpu", {}), cpu, "cpu")
    recorded_inputs = {p: d for group in record.get("inputs", {}).values() for p, d in group.items()}
    now_inputs = {p: d for group in inputs.values() for p, d in group.items()}
    reasons += _diff_digests("input", recorded_inputs, now_inputs)
    return reasons


_SLUG = str.maketrans({"/": "\u2215", "{": "(", "}": ")", "<": "\u2039", "\\": "\u29f5"})


def _slug(text: str) -> str:
    """A file name that says `text`: no path separator, and nothing Snakemake reads as a wildcard ({...}) or a
    path variable (<...>) in an input path."""
    text = re.sub(r"[\x00-\x1f]", " ", text).translate(_SLUG).strip()
    return text[:150] or "_"


# -------------------------------------------------------------------------------------------- the book


class Currency:
    """Decisions about the jobs of one Snakemake workflow, made once per job and process."""

    def __init__(self, workflow, config: Mapping):
        from heatedasc.pinning import recorded

        self.workflow = workflow
        self.config = config
        self.data_root = config.get("data", {}).get("root")
        self.expected_cpu = recorded(config.get("cpu"))  # every job runs under these (heatedasc.job)
        self.decisions: dict[tuple, Decision] = {}
        self._producers: dict[str, tuple[str, dict]] | None = None
        self._deciding: set[tuple] = set()
        self._digests: dict[str, str] = {}  # path -> content digest, for one planning pass

    # ---- wiring
    def install(self) -> None:
        """Give every rule that writes files the `why` input. A rule with outputs but no `provenance` output, or
        no script, is an error at parsing: every job records what it ran (heatedasc.job.run_job)."""
        for rule in self.workflow.rules:
            if not rule.output:
                continue  # an aggregate target
            names = dict(getattr(rule.output, "_names", {}))
            if RECORD_OUTPUT not in names:
                raise ValueError(f"rule {rule.name}: every rule that writes files must name its record "
                                 f"`{RECORD_OUTPUT}=...` among its outputs (heatedasc.job.run_job writes it)")
            if not rule.script:
                raise ValueError(f"rule {rule.name}: must run a script (workflow/scripts/) through heatedasc.job.run_job")
            rule.set_input(**{WHY_INPUT: self._why(rule.name)})

    def _why(self, rule_name: str):
        def why(wildcards):
            if not self.workflow.is_main_process:
                return []  # a cluster job: the main process decided; the job records what it runs
            return self.decide(rule_name, dict(wildcards.items())).tokens

        why.__name__ = f"why_{rule_name}"
        return why

    # ---- records on disk
    def producers(self) -> dict[str, tuple[str, dict]]:
        """Portable output path -> (rule, wildcards), from the records of every recording rule. The first call also
        hashes every file those records name, on every core at once (what a plan after `dvc pull` spends its time
        on; the jobs' decisions then find the digests ready)."""
        if self._producers is None:
            found: dict[str, tuple[str, dict]] = {}
            named: set[str] = set()
            for rule in self.workflow.rules:
                names = dict(getattr(rule.output, "_names", {}))
                if RECORD_OUTPUT not in names:
                    continue
                pattern = str(rule.output[names[RECORD_OUTPUT][0]])
                for path in glob.glob(re.sub(r"\{[^}]+\}", "*", pattern), recursive=False):
                    record = read_record(path)
                    if record is None or record.get("rule") != rule.name:
                        continue
                    for group in record.get("outputs", {}).values():
                        for p in group:
                            found[p] = (rule.name, record.get("wildcards", {}))
                    for section in ("inputs", "outputs"):
                        named.update(local(p, self.data_root) for group in record.get(section, {}).values()
                                     for p in group)
            self._producers = found
            self._digests.update(digest_many(sorted(named), workers=os.cpu_count() or 1))
        return self._producers

    def digests(self, paths: list[str]) -> dict[str, str]:
        """Content digests of `paths` ('missing' for absent ones), each computed once per planning pass."""
        todo = [p for p in paths if p not in self._digests]
        if todo:
            self._digests.update(digest_many(todo, workers=os.cpu_count() or 1))
        return {p: self._digests[p] for p in paths}

    # ---- the decision
    def decide(self, rule_name: str, wildcards: Mapping) -> Decision:
        wildcards = {k: str(v) for k, v in wildcards.items()}
        key = (rule_name, tuple(sorted(wildcards.items())))
        if key in self.decisions:
            return self.decisions[key]
        self._deciding.add(key)
        try:
            decision = self._decide(rule_name, wildcards)
        finally:
            self._deciding.discard(key)
        self.decisions[key] = decision
        _report(decision)
        return decision

    def _decide(self, rule_name: str, wildcards: dict) -> Decision:
        rule = self.workflow.get_rule(rule_name)
        what = f"rule {rule_name}"
        outputs = _named(rule.output, wildcards, what)
        record_path = outputs[RECORD_OUTPUT][0]
        decision = Decision(job_name(rule_name, wildcards), rule_name, wildcards, record_path, "current")
        all_outputs = [p for paths in outputs.values() for p in paths]
        if not all(os.path.exists(p) for p in all_outputs):
            decision.state = "missing"
            return decision
        inputs = _named(rule.input, wildcards, what, skip=(WHY_INPUT,))
        input_paths = [p for paths in inputs.values() for p in paths]
        self._decide_producers(input_paths)
        record = read_record(record_path)
        now: dict[str, str] = {}
        if record is None:
            decision.reasons = ["no record of how the outputs were made (written by older code, or cut short)"]
        else:
            data_outputs = {k: v for k, v in outputs.items() if k != RECORD_OUTPUT}
            now = self.digests([p for paths in data_outputs.values() for p in paths] +
                               [p for p in input_paths if os.path.exists(p)])
            decision.reasons = compare(
                record,
                params=recorded_params(_params(rule, wildcards)),
                code=code_digests(_script(rule)),
                cpu=self.expected_cpu,
                inputs={k: {portable(p, self.data_root): now.get(p, "missing") for p in v} for k, v in inputs.items()},
                outputs={k: {portable(p, self.data_root): now[p] for p in v} for k, v in data_outputs.items()},
            )
        if decision.reasons:
            decision.state = "stale"
            decision.tokens = self._tokens(rule_name, wildcards, decision.reasons, all_outputs)
        else:
            # Snakemake counts the benchmark file among the outputs whose oldest date it compares (Job.output_mintime)
            benchmark = _flatten(rule.benchmark, wildcards, what) if rule.benchmark else []
            self._redate(input_paths, all_outputs + [b for b in benchmark if os.path.exists(b)], now)
        return decision

    def _decide_producers(self, input_paths: list[str]) -> None:
        """Decide (and so re-date) the jobs that wrote these inputs before the job that reads them."""
        producers = self.producers()
        for p in input_paths:
            found = producers.get(portable(p, self.data_root))
            if found is None:
                continue
            key = (found[0], tuple(sorted(found[1].items())))
            if key in self._deciding or key in self.decisions:
                continue
            try:
                self.decide(found[0], found[1])
            except (KeyError, ValueError, LookupError):
                continue  # a record of a job this configuration does not have: not ours to decide

    def _redate(self, input_paths: list[str], outputs: list[str], digests: Mapping[str, str]) -> None:
        existing = [p for p in input_paths if os.path.exists(p)]
        newest_input = max((input_mtime_ns(p) for p in existing), default=None)
        if newest_input is None:
            return
        target = newest_input + REDATE_STEP_NS
        for out in outputs:
            if output_mtime_ns(out) <= newest_input:
                redate_output(out, target)
                if os.path.isfile(out) and not os.path.islink(out):  # its bytes are unchanged; its ctime is not
                    remember(out, digests[out] if out in digests else digest(out))

    def _tokens(self, rule_name: str, wildcards: Mapping, reasons: list[str], outputs: list[str]) -> list[str]:
        folder = WHY_DIR / rule_name / _slug(",".join(f"{k}={v}" for k, v in wildcards.items()) or "_")
        shown = reasons[:MAX_REASONS]
        if len(reasons) > MAX_REASONS:
            shown.append(f"and {len(reasons) - MAX_REASONS} more differences")
        # Newer than the oldest output (what Snakemake compares), never in the future: Snakemake checks after the
        # job that its outputs are newer than every input, and a token from the future would fail that check.
        stamp = time.time_ns()
        existing = [p for p in outputs if os.path.exists(p)]
        if existing and min(output_mtime_ns(p) for p in existing) >= stamp:  # outputs dated in the future
            for p in existing:
                redate_output(p, stamp - 1_000_000_000)
        folder.mkdir(parents=True, exist_ok=True)
        tokens = []
        for reason in shown:
            token = folder / _slug(reason)
            tmp = folder / f".{token.name}.{os.getpid()}.tmp"
            # new text each time: Snakemake skips a newer input whose checksum it has seen before
            tmp.write_text(f"{job_name(rule_name, wildcards)} is out of date: {reason}\nplanned {time.time_ns()}\n")
            os.utime(tmp, ns=(stamp, stamp))
            os.replace(tmp, token)
            tokens.append(str(token))
        return tokens

    def _touch_record(self, rule_name: str, wildcards: dict) -> None:
        """--touch: the record of an out-of-date job now describes what is there, marked as touched."""
        from heatedasc.fileio import write_json
        from heatedasc.provenance import stable_record

        rule, what = self.workflow.get_rule(rule_name), f"rule {rule_name}"
        outputs = _named(rule.output, wildcards, what)
        record = stable_record(rule=rule_name, wildcards=wildcards, params=_params(rule, wildcards), script=_script(rule),
                               inputs=_named(rule.input, wildcards, what, skip=(WHY_INPUT,)),
                               outputs={k: v for k, v in outputs.items() if k != RECORD_OUTPUT},
                               cpu=self.expected_cpu, data_root=self.data_root)
        record["touched"] = "marked current by snakemake --touch, not recomputed"
        write_json(outputs[RECORD_OUTPUT][0], record)

    def mark_current(self, rounds: int = 20) -> None:
        """After `snakemake --touch`: rewrite the record of every out-of-date job of the run to describe its inputs
        and outputs as they are, round after round until none is left (a job's record is its consumers' input)."""
        for _ in range(rounds):
            stale = [d for d in self.verify() if d.state == "stale"]
            if not stale:
                return
            for d in stale:
                self._touch_record(d.rule, d.wildcards)

    # ---- after a run
    def verify(self) -> list[Decision]:
        """Decide every job of this run again, from what is on disk now: those not current (none, normally)."""
        self._producers = None
        self._digests.clear()
        keys = list(self.decisions)
        self.decisions.clear()
        return [d for rule, wc in keys if (d := self.decide(rule, dict(wc))).state != "current"]


def _report(decision: Decision) -> None:
    target = os.environ.get(PLAN_ENV)
    if not target:
        return
    line = json.dumps({k: v for k, v in asdict(decision).items() if k != "tokens"}, sort_keys=True)
    with open(target, "a") as fh:
        fh.write(line + "\n")


def read_plan(path: str | os.PathLike) -> dict[tuple, dict]:
    """The decisions a plan reported ((rule, sorted wildcards) -> decision; the last one of a job wins)."""
    out: dict[tuple, dict] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        d = json.loads(line)
        out[(d["rule"], tuple(sorted(d["wildcards"].items())))] = d
    return out

