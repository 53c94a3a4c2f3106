"""One self-contained HTML page: every registered table (rendered from its CSV, the same cells as its
Markdown file), every figure (embedded as base64 PNG so the file is portable), the selection note, the
effective configuration and a lineage summary of the training runs (recipe fingerprint, code, feature-cache
hashes; nothing that changes when an identical run is repeated). Each caveat is printed once: the tables'
shared ones (the selection note) at the top, not again under each table. The page is one Jinja2 template
filled from data."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from heatedasc.fileio import write_text
from heatedasc.report.runs import selection_note
from heatedasc.runkey import run_label

if TYPE_CHECKING:
    from heatedasc.report.context import RenderContext

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #ddd}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:0.5em 1em}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.8em}code{font-size:0.9em}
.missing{color:#b22222}.scroll{overflow-x:auto;max-width:100%}summary{cursor:pointer;color:#0645ad}
@media (max-width:600px){body{margin:0.5em auto;padding:0 0.5em}h1{font-size:1.3em}}"""

LINEAGE_HEAD = ("run (correction/T/loss/seed)", "recipe sha256", "code sha256", "torch",
                "train cache md5", "evaluate cache md5", "stats md5", "coefficients md5")
# The page is a tracked output: it holds only what an identical rerun reproduces. When and where each run
# ran (time, host, GPU, SLURM job, git commit) is in logs/provenance/, read by `heatedasc lineage`.
WHEN_WHERE = ("When and where each run ran (time, host, GPU, SLURM job, git commit) is kept beside the logs on "
              "the machine that ran it: <code>heatedasc lineage results/runs/&lt;run&gt;/metrics.json</code>.")

TEMPLATE = """\
{%- macro table(t) -%}
<div class="scroll"><table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}<tr>{% for v in row %}<td{% if v == "missing" %} class="missing"{% endif %}>{{ v }}</td>\
{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{%- endmacro -%}
<!DOCTYPE html><html><head><meta charset='utf-8'><title>Heated-up softmax + spectrum correction: report</title>\
<style>{{ css }}</style></head><body>
<h1>Acoustic scene classification for mismatched devices: heated-up softmax and spectrum correction \
— reproduction report</h1>
<p>Made by {{ origin }}; {{ n_runs }} training run(s).</p>
{% if caveat %}<section id="caveat"><div class="warn"><p>{{ caveat }}</p></div></section>
{% endif -%}
<section id="selection"><h2>Model selection</h2><div class="warn"><p>{{ selection }}</p></div></section>
{% if shared %}<section id="caveats"><h2>Caveats</h2><div class="warn">{% for c in shared %}<p>{{ c }}</p>{% endfor %}\
</div></section>
{% endif -%}
<h2>Tables</h2>
{% for s in tables -%}
<section id="{{ s.id }}"><h2>{{ s.title }}</h2><p><em>{{ s.caption }}</em></p>
{% if s.doc -%}
<h3>{{ s.doc.title }}</h3>
{{ table(s.doc) }}
{% for line in s.doc.lines %}<p>{{ line }}</p>
{% endfor -%}
{% else %}<p class="missing">missing: {{ s.path }}</p>
{% endif %}</section>
{% endfor -%}
<h2>Figures</h2>
{% for s in figures -%}
<section id="{{ s.id }}"><h2>{{ s.title }}</h2>\
{% if s.src %}<p><em>{{ s.caption }}</em></p><img alt="{{ s.title }}" src="{{ s.src }}">\
{% else %}<p class="missing">missing: {{ s.path }}</p>{% endif %}</section>
{% endfor -%}
<section id="data"><h2>Data behind the report</h2><ul>\
{% for l in links %}<li><a href="{{ l.href }}">{{ l.name }}</a> ({{ l.key }})</li>{% endfor %}</ul></section>
<section id="lineage"><h2>Lineage of the training runs</h2>
{% if lineage -%}
<div class="scroll"><table><thead><tr>{% for h in lineage_head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for r in lineage -%}
{% if r.missing %}<tr><td class="missing" colspan="{{ lineage_head|length }}">{{ r.record }}: \
no provenance record</td></tr>
{% else %}<tr>{% for c in r.cells %}<td><code>{{ c }}</code></td>{% endfor %}</tr>
{% endif %}{% endfor -%}
</tbody></table></div><p>Hashes shortened to 12 hex digits; full values in each run's provenance.json. \
<code>heatedasc lineage &lt;file&gt;</code> audits them against the disk. {{ when_where }}</p>
{%- else %}<p>No run provenance records.</p>{% endif %}</section>
<section id="config"><h2>Effective configuration</h2><details><summary>{{ config_lines }} lines: \
params.yaml merged with the override files, without the speed-only and cluster settings</summary>\
<pre>{{ config_yaml }}</pre></details></section></body></html>
"""


def embed_png(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recipe_digest(record: Mapping) -> str:
    """One SHA-256 for what made a job's outputs: its rule, wildcards, params, code, CPU kernels and inputs."""
    return _digest({k: record.get(k) for k in ("rule", "wildcards", "params", "code", "cpu", "inputs")})


def code_digest(record: Mapping) -> str:
    """One SHA-256 for a job's code (its adapter script and library import closure, by content)."""
    return _digest(record.get("code", {}))


def lineage_rows(provenance_files: Iterable) -> list[dict]:
    """One row per run provenance record: the run, its recipe fingerprint, code and torch versions, input hashes."""
    rows = []
    for f in provenance_files:
        f = Path(f)
        if not f.is_file():
            rows.append({"record": str(f), "missing": True})
            continue
        rec = json.loads(f.read_text())
        wc = rec.get("wildcards", {})

        def first_hash(key):
            hashes = rec.get("inputs", {}).get(key, {})
            return next(iter(hashes.values()), None)

        rows.append({
            "record": str(f),
            "run": run_label(wc),
            "fingerprint": recipe_digest(rec),
            "library": code_digest(rec),
            "torch": rec.get("packages", {}).get("torch"),
            "train_cache": first_hash("train"),
            "evaluate_cache": first_hash("evaluate"),
            "stats": first_hash("stats"),
            "coefficients": first_hash("coefficients"),
        })
    return rows


def _lineage_cells(row: Mapping) -> list[str]:
    short = lambda h: "–" if not h else str(h)[:12]  # noqa: E731
    return [row["run"], short(row["fingerprint"]), short(row["library"]), str(row["torch"] or "–"),
            short(row["train_cache"]), short(row["evaluate_cache"]), short(row["stats"]), short(row["coefficients"])]


def _relative(path: Path, base: Path) -> str:
    p = path.resolve()
    try:
        p = p.relative_to(base.resolve())
    except ValueError:
        pass
    return p.as_posix()


def render_page(ctx: RenderContext, out: Mapping[str, str]) -> None:
    """The page of every artefact in ctx.registry, from the files in ctx.artefacts (absent ones are named
    as missing; a figure of another stage that has not run is left out)."""
    import jinja2
    import markupsafe
    import yaml

    from heatedasc.config import NOT_RESULT_SECTIONS  # the page is a result: no speed-only settings in its dump

    page = Path(out["report_html"])
    assert ctx.runs is not None  # the page needs the runs' metrics (registry)
    selection = selection_note(ctx.runs)
    tables, figures, links, shared = [], [], [], []
    for artefact in ctx.registry:
        for t in artefact.tables:
            csv = ctx.artefacts.get(t.csv)
            section: dict[str, Any] = {"id": t.markdown, "title": t.title, "caption": t.caption, "path": csv, "doc": None}
            if csv and Path(csv).is_file():
                doc = t.document_from(csv, ctx)
                section["doc"] = {"title": doc.title, "columns": list(doc.frame.columns),
                                  "rows": doc.frame.values.tolist(),
                                  "lines": [line for note in doc.notes for line in note.splitlines() if line.strip()]}
                # caveats several tables carry (the selection note): once on the page, at the top
                shared += [line for note in doc.shared for line in note.splitlines()
                           if line.strip() and line != selection and line not in shared]
            tables.append(section)
        figures += [(f, False) for f in artefact.figures]
        for key, rel in artefact.outputs.items():
            p = ctx.artefacts.get(key)
            if Path(rel).suffix in (".csv", ".json") and p and Path(p).is_file():
                links.append({"href": _relative(Path(p), page.parent), "name": Path(p).name, "key": key})
    figures += [(f, True) for f in ctx.registry.upstream_figures]
    figure_sections = []
    for f, optional in figures:
        p = ctx.artefacts.get(f.key)
        present = bool(p and Path(p).is_file())
        if present or not optional:
            figure_sections.append({"id": f.key, "title": f.title, "caption": f.caption, "path": p,
                                    "src": embed_png(p) if present else None})
    lineage = [{"missing": True, "record": r["record"]} if r.get("missing")
               else {"missing": False, "cells": _lineage_cells(r)} for r in lineage_rows(ctx.provenance_files)]
    config_yaml = yaml.safe_dump(json.loads(json.dumps(
        {k: v for k, v in ctx.config.items() if k not in NOT_RESULT_SECTIONS}, default=str)), sort_keys=False)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(TEMPLATE).render(
        css=markupsafe.Markup(CSS), when_where=markupsafe.Markup(WHEN_WHERE),
        origin=ctx.origin, n_runs=len(ctx.runs), caveat=ctx.caveat, selection=selection, shared=shared,
        tables=tables, figures=figure_sections, links=links, lineage=lineage, lineage_head=LINEAGE_HEAD,
        config_yaml=config_yaml, config_lines=config_yaml.count("\n"))
    write_text(page, html)
