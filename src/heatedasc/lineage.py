"""Lineage audit: walk a result back through the jobs that made it to the raw audio and code.

Every workflow job writes a provenance record (heatedasc.provenance.record_job) with the content
hashes of its inputs and outputs, its params, the config, code version, package versions, host and
SLURM job. `audit(path)` finds the record that produced `path`, checks each recorded hash against
what is on disk now, recurses into the records that produced its inputs, and (given the current
configuration) compares the config sections each stage depends on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from heatedasc.provenance import load_volatile, sha256_path

# The config sections whose values decide each stage's outputs (besides its input files).
STAGE_SECTIONS = {
    "prepare": ("data",),
    "mean_spectra": ("features.n_fft", "features.hop_length", "features.remove_dc", "data.devices"),
    "coefficients": ("correction",),
    "coefficient_plot": (),
    "feature_stats": ("features", "data.sample_rate"),
    "features": ("features", "data.sample_rate"),
    "train": ("model", "loss", "train"),
    "tables": ("report", "paper"),
    "fig3": ("report", "paper"),
    "fig2": ("report",),
    "calibration": ("report", "sweep"),
    "confusion": ("report",),
    "significance": ("report",),
    "report_html": ("report", "paper"),
}


@dataclass
class Link:
    """One input or output of a job, with its recorded and current content hash."""

    role: str  # "input" | "output"
    key: str
    path: str
    recorded: str
    current: str | None
    produced: bool = False  # an input made by another job of the workflow (else raw data or code)

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
    config_changes: list[str] = field(default_factory=list)
    parents: list["Node"] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.record.get("stage", "?")

    @property
    def own_ok(self) -> bool:
        return not self.config_changes and all(l.status == "ok" for l in self.links)

    @property
    def stale(self) -> bool:
        return not self.own_ok or any(p.stale for p in self.parents)


def _norm(path: str, base: Path) -> str:
    p = Path(path)
    return os.path.normpath(str(p if p.is_absolute() else base / p))


def load_records(results_dir: str | os.PathLike, base: str | os.PathLike = ".") -> dict[str, tuple[str, dict]]:
    """Map every output path named in a provenance record under `results_dir` to (record file, record)."""
    base = Path(base)
    producers: dict[str, tuple[str, dict]] = {}
    for rec_file in sorted(Path(results_dir).rglob("*provenance.json")):
        try:
            record = json.loads(rec_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{rec_file}: unreadable provenance record ({exc})") from exc
        for paths in record.get("outputs", {}).values():
            for p in paths:
                producers[_norm(p, base)] = (str(rec_file), record)
        producers[_norm(str(rec_file), base)] = (str(rec_file), record)
    return producers


def _get(config: Mapping, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _config_changes(stage: str, recorded: Mapping, current: Mapping | None) -> list[str]:
    if current is None:
        return []
    changes = []
    for section in STAGE_SECTIONS.get(stage, ()):
        before, now = _get(recorded, section), _get(current, section)
        if json.dumps(before, sort_keys=True, default=str) != json.dumps(now, sort_keys=True, default=str):
            changes.extend(_diff(section, before, now))
    return changes


def _diff(prefix: str, a, b) -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out.extend(_diff(f"{prefix}.{k}", a.get(k), b.get(k)))
        return out
    if json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str):
        return []
    return [f"{prefix}: {a!r} -> {b!r}"]


def audit(
    target: str | os.PathLike,
    *,
    results_dir: str | os.PathLike = "results",
    base: str | os.PathLike = ".",
    config: Mapping | None = None,
) -> Node:
    """The lineage tree of `target` with every link checked against the disk (and `config`, if given)."""
    base = Path(base)
    producers = load_records(Path(base) / results_dir if not Path(results_dir).is_absolute() else results_dir, base)
    key = _norm(str(target), base)
    if key not in producers:
        raise ValueError(f"{target}: no provenance record produced this file (is it a workflow output under {results_dir}?)")
    hashes: dict[str, str | None] = {}
    nodes: dict[str, Node] = {}

    def current_hash(path: str) -> str | None:
        if path not in hashes:
            hashes[path] = sha256_path(path) if os.path.exists(path) else None
        return hashes[path]

    def visit(rec_file: str, record: dict) -> Node:
        if rec_file in nodes:
            return nodes[rec_file]
        node = Node(rec_file, record, load_volatile(rec_file, base))
        nodes[rec_file] = node
        for role, items in (("input", record.get("inputs", {})), ("output", record.get("outputs", {}))):
            for k, paths in items.items():
                for p, digest in paths.items():
                    node.links.append(Link(role, k, p, digest, current_hash(_norm(p, base))))
        node.config_changes = _config_changes(record.get("stage", ""), record.get("config", {}), config)
        parents = []
        for link in node.links:
            if link.role == "input":
                producer = producers.get(_norm(link.path, base))
                if producer and producer[0] != rec_file:
                    link.produced = True
                    parents.append(visit(*producer))
        node.parents = list({id(p): p for p in parents}.values())
        return node

    return visit(*producers[key])


def stale_records(root: Node) -> list[str]:
    """Record files of every job in the tree whose own links or config changed."""
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
    """A human-readable tree, newest job first, with ✓/✗ per link."""
    lines: list[str] = []
    printed: set[str] = set()

    def describe(n: Node) -> str:
        r, v = n.record, n.volatile
        wc = ", ".join(f"{k}={v}" for k, v in r.get("wildcards", {}).items())
        code = (r.get("code") or {}).get("package_sha256", "?")[:10]
        torch_v = r.get("packages", {}).get("torch")
        status = "STALE" if n.stale else "ok"
        if not v:
            where = "when/where not recorded on this machine"
        else:
            git = v.get("git") or {}
            slurm = v.get("slurm") or {}
            host = v.get("host") or {}
            where = f"at {v.get('created', '?')} on {host.get('hostname', '?')}"
            if slurm:
                where += f", SLURM job {slurm.get('slurm_job_id')}"
            if host.get("gpus"):
                where += f", GPU {', '.join(host['gpus'])}"
            where += "; git " + (git.get("git_commit") or "none")[:10] + (" (dirty)" if git.get("git_dirty") else "")
        return f"[{status}] {n.stage}({wc}) {where}; code {code}; torch {torch_v}"

    def walk(n: Node, depth: int):
        pad = "  " * depth
        if n.record_path in printed:
            lines.append(f"{pad}↳ {n.stage}({', '.join(f'{k}={v}' for k, v in n.record.get('wildcards', {}).items())}) (see above)")
            return
        printed.add(n.record_path)
        lines.append(pad + describe(n))
        for link in n.links:
            # Always show raw inputs (audio, metadata, code) and anything that changed.
            if link.status != "ok" or verbose or (link.role == "input" and not link.produced):
                mark = {"ok": "✓", "changed": "✗ changed", "missing": "✗ missing"}[link.status]
                lines.append(f"{pad}    {mark} {link.role} {link.key}: {link.path} sha256 {link.recorded[:12]}")
        for c in n.config_changes:
            lines.append(f"{pad}    ✗ config {c}")
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
                "stage": n.stage,
                "wildcards": n.record.get("wildcards", {}),
                "stale": n.stale,
                "own_ok": n.own_ok,
                "links": [
                    {"role": l.role, "key": l.key, "path": l.path, "status": l.status, "sha256": l.recorded}
                    for l in n.links
                ],
                "config_changes": n.config_changes,
                "code": n.record.get("code"),
                "packages": n.record.get("packages"),
                "volatile": n.volatile,
                "parents": [p.record_path for p in n.parents],
            }
            for p in n.parents:
                conv(p)
        return seen[n.record_path]

    conv(root)
    return {"target": root.record_path, "stale": root.stale, "jobs": list(seen.values())}

