"""Lineage audit: walk a result back through the jobs that made it to the raw audio and the code.

Every workflow job writes a record of what it read and wrote (heatedasc.provenance, through heatedasc.job): its
params, code and inputs by content, and its outputs by content; when and where it ran lies beside the logs.
`audit(path)` finds the record that produced `path`, checks every recorded hash against the disk, recurses into
the records that produced its inputs, and — given the decisions of a plan of the current configuration (`plan()`
runs `snakemake -n`, which reports them; heatedasc.currency) — says for each job exactly what differs from what
it would read now: a param by key, a library file by name, an input or a raw audio file by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from heatedasc.currency import PLAN_ENV, job_name, read_plan
from heatedasc.hashing import digest
from heatedasc.provenance import load_volatile, local, read_record

MAX_NAMED_FILES = 20


@dataclass
class Link:
    """One input or output of a job, with its recorded and current content hash."""

    role: str  # "input" | "output"
    key: str
    path: str  # as the record names it (portable)
    recorded: str
    current: str | None
    produced: bool = False  # an input made by another job of the workflow (else raw data)

    @property
    def status(self) -> str:
        if self.current is None:
            return "missing"
        return "ok" if self.current == self.recorded else "changed"


@dataclass
class Node:
    record_path: str
    record: dict
    volatile: dict = field(default_factory=dict)  # when/where it ran: logs/provenance/, {} on another machine
    links: list[Link] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # what differs from what it would read now
    notes: list[str] = field(default_factory=list)  # facts that do not make it stale (e.g. marked current by --touch)
    parents: list["Node"] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.record.get("rule", "?")

    @property
    def job(self) -> str:
        return job_name(self.stage, self.record.get("wildcards", {}))

    @property
    def own_ok(self) -> bool:
        return not self.changes and all(l.status == "ok" for l in self.links)

    @property
    def stale(self) -> bool:
        return not self.own_ok or any(p.stale for p in self.parents)


def _norm(path: str, base: Path) -> str:
    p = Path(path)
    return os.path.normpath(str(p if p.is_absolute() else base / p))


def load_records(results_dir: str | os.PathLike, base: str | os.PathLike = ".", data_root=None) -> dict[str, tuple[str, dict]]:
    """Map every output path named in a record (and each record file) to (record file, record). Records sit under
    `results_dir`, and the synthetic generator's beside its data (<data.root>/provenance.json)."""
    base = Path(base)
    producers: dict[str, tuple[str, dict]] = {}
    files = sorted(Path(results_dir).rglob("*provenance.json"))
    if data_root is not None and (Path(base, data_root) / "provenance.json").is_file():
        files.append(Path(base, data_root) / "provenance.json")
    for rec_file in files:
        if not rec_file.is_file():
            continue
        try:
            raw = json.loads(rec_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{rec_file}: unreadable provenance record ({exc})") from exc
        record = read_record(rec_file)
        if record is None:
            if isinstance(raw, dict) and "rule" not in raw and "stage" in raw:
                raise ValueError(f"{rec_file}: a record of an older format; rerun the workflow to renew it")
            continue
        for paths in record.get("outputs", {}).values():
            for p in paths:
                producers[_norm(local(p, data_root), base)] = (str(rec_file), record)
        producers[_norm(str(rec_file), base)] = (str(rec_file), record)
    return producers


def plan(configfiles: Sequence[str], *, base: str | os.PathLike = ".", snakefile: str | os.PathLike | None = None,
         target: str = "all", env: dict | None = None) -> dict[tuple, dict]:
    """The decisions of a dry run of the workflow with `configfiles` ((rule, wildcards) -> decision); `env`: the
    environment of the snakemake process (default: this one's)."""
    from heatedasc.config import REPO_ROOT

    with tempfile.TemporaryDirectory(prefix="heatedasc-plan-") as tmp:
        report = Path(tmp) / "plan.jsonl"
        cmd = [sys.executable, "-m", "snakemake", target, "-n", "--quiet", "all", "--snakefile",
               str(snakefile or REPO_ROOT / "Snakefile"), "--directory", str(base), "--configfile",
               *map(str, configfiles)]
        env = {**(os.environ if env is None else env), PLAN_ENV: str(report)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ValueError(f"planning the workflow (snakemake -n) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return read_plan(report)


def changed_raw_files(record: dict, base: Path, data_root) -> list[str]:
    """For the prepare job: the raw audio files whose content differs from the manifest's raw_md5."""
    import pandas as pd

    manifests = [p for paths in record.get("outputs", {}).values() for p in paths if p.endswith("manifest.csv")]
    metas = [p for k, paths in record.get("inputs", {}).items() if k == "meta" for p in paths]
    if not manifests or not metas or not (base / manifests[0]).is_file():
        return []
    root = Path(local(metas[0], data_root)).parent
    root = root if root.is_absolute() else base / root
    changed = []
    for name, sha in pd.read_csv(base / manifests[0], usecols=["filename", "raw_md5"]).itertuples(index=False):
        path = root / name
        if not path.is_file():
            changed.append(f"{name} (missing)")
        elif digest(path) != sha:
            changed.append(name)
    return changed


def audit(target: str | os.PathLike, *, results_dir: str | os.PathLike = "results", base: str | os.PathLike = ".",
          decisions: dict[tuple, dict] | None = None, data_root=None) -> Node:
    """The lineage tree of `target`, every link checked against the disk, and (given a plan's `decisions`) every
    job's record against what it would read now."""
    base = Path(base)
    results = Path(results_dir) if Path(results_dir).is_absolute() else base / results_dir
    producers = load_records(results, base, data_root)
    key = _norm(str(target), base)
    if key not in producers:
        raise ValueError(f"{target}: no provenance record produced this file (is it a workflow output under {results_dir}?)")
    hashes: dict[str, str | None] = {}
    nodes: dict[str, Node] = {}

    def current_hash(path: str) -> str | None:
        if path not in hashes:
            hashes[path] = digest(path) if os.path.exists(path) else None
        return hashes[path]

    def visit(rec_file: str, record: dict) -> Node:
        if rec_file in nodes:
            return nodes[rec_file]
        node = Node(rec_file, record, load_volatile(rec_file, base))
        nodes[rec_file] = node
        for role, items in (("input", record.get("inputs", {})), ("output", record.get("outputs", {}))):
            for k, paths in items.items():
                for p, d in paths.items():
                    node.links.append(Link(role, k, p, d, current_hash(_norm(local(p, data_root), base))))
        if decisions is not None:
            d = decisions.get((node.stage, tuple(sorted(record.get("wildcards", {}).items()))))
            if d is None:
                node.changes = ["not in the current configuration's plan"]
            elif d["state"] == "stale":  # changed inputs and outputs show as links already
                node.changes = [c for c in d["reasons"] if not (c.startswith(("input ", "output "))
                                                                 and c.endswith(("changed", "since the job wrote it")))]
        if record.get("touched"):
            node.notes.append(f"outputs {record['touched']}")
        if node.stage == "prepare" and any(l.role == "input" and l.key == "audio" and l.status != "ok"
                                           for l in node.links):
            files = changed_raw_files(record, base, data_root)
            shown = files[:MAX_NAMED_FILES] + ([f"... {len(files) - MAX_NAMED_FILES} more"]
                                               if len(files) > MAX_NAMED_FILES else [])
            node.changes += [f"raw audio {f} changed" for f in shown]
        parents = []
        for link in node.links:
            if link.role == "input":
                producer = producers.get(_norm(local(link.path, data_root), base))
                if producer and producer[0] != rec_file:
                    link.produced = True
                    parents.append(visit(*producer))
        node.parents = list({id(p): p for p in parents}.values())
        return node

    return visit(*producers[key])


def stale_records(root: Node) -> list[str]:
    """Record files of every job in the tree whose own links or recipe changed."""
    seen, out = set(), []

    def walk(n: Node):
        if n.record_path in seen:
            return
        seen.add(n.record_path)
        if not n.own_ok:
            out.append(n.record_path)
        for p in n.parents:
            walk(p)

    walk(root)
    return out


def render(root: Node, *, verbose: bool = False) -> str:
    """A human-readable tree, newest job first, with ✓/✗ per link and one line per change."""
    from heatedasc.report.html import code_digest, recipe_digest

    lines: list[str] = []
    printed: set[str] = set()

    def describe(n: Node) -> str:
        r, v = n.record, n.volatile
        torch_v = r.get("packages", {}).get("torch")
        status = "STALE" if n.stale else "ok"
        if not v:
            where = "when/where not recorded on this machine"
        else:
            git, slurm, host = v.get("git") or {}, v.get("slurm") or {}, v.get("host") or {}
            where = f"at {v.get('created', '?')} on {host.get('hostname', '?')}"
            if slurm:
                where += f", SLURM job {slurm.get('slurm_job_id')}"
            if host.get("gpus"):
                where += f", GPU {', '.join(host['gpus'])}"
            where += "; git " + (git.get("git_commit") or "none")[:10] + (" (dirty)" if git.get("git_dirty") else "")
        return f"[{status}] {n.job} {where}; recipe {recipe_digest(r)[:12]}; code {code_digest(r)[:10]}; torch {torch_v}"

    def walk(n: Node, depth: int):
        pad = "  " * depth
        if n.record_path in printed:
            lines.append(f"{pad}↳ {n.job} (see above)")
            return
        printed.add(n.record_path)
        lines.append(pad + describe(n))
        for link in n.links:
            # Always show raw inputs (audio, metadata) and anything that changed.
            if link.status != "ok" or verbose or (link.role == "input" and not link.produced):
                mark = {"ok": "✓", "changed": "✗ changed", "missing": "✗ missing"}[link.status]
                lines.append(f"{pad}    {mark} {link.role} {link.key}: {link.path} md5 {link.recorded[:12]}")
        for c in n.changes:
            lines.append(f"{pad}    ✗ {c}")
        for c in n.notes:
            lines.append(f"{pad}    ! {c}")
        for p in n.parents:
            walk(p, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def to_dict(root: Node) -> dict:
    seen: dict[str, dict] = {}

    def conv(n: Node) -> dict:
        if n.record_path not in seen:
            seen[n.record_path] = {
                "record": n.record_path,
                "job": n.job,
                "stage": n.stage,
                "wildcards": n.record.get("wildcards", {}),
                "stale": n.stale,
                "own_ok": n.own_ok,
                "links": [
                    {"role": l.role, "key": l.key, "path": l.path, "status": l.status, "digest": l.recorded}
                    for l in n.links
                ],
                "changes": n.changes,
                "notes": n.notes,
                "params": n.record.get("params"),
                "code": n.record.get("code"),
                "cpu": n.record.get("cpu"),
                "packages": n.record.get("packages"),
                "volatile": n.volatile,
                "parents": [p.record_path for p in n.parents],
            }
            for p in n.parents:
                conv(p)
        return seen[n.record_path]

    conv(root)
    return {"target": root.record_path, "stale": root.stale, "jobs": list(seen.values())}
