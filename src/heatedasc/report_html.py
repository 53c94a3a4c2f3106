"""One self-contained HTML report: every table (from its Markdown rendering), every figure (embedded as
base64 PNG so the file is portable), the selection note, the effective configuration and a lineage
summary of the training runs (git commit, SLURM job, feature-cache hashes)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Iterable, Mapping

from heatedasc.fileio import write_text

# (artefact key, heading, caption) in the order they appear.
TABLES = (
    ("table2_md", "Table 2", "T = 1: device A and Avg.BC accuracy per correction and loss."),
    ("table3_md", "Table 3", "The paper's quoted systems and this reproduction's rows."),
    ("calibration_md", "Calibration", "Expected calibration error of softmax(z/T) per correction, T and loss."),
    ("significance_md", "Significance", "The paper's comparisons, paired over seeds."),
)
FIGURES = (
    ("fig3", "Fig. 3", "Accuracy against temperature per correction (mean ± sd over seeds)."),
    ("fig2", "Fig. 2", "PCA of the GAP embeddings, test and train rows, per T."),
    ("reliability", "Reliability diagrams", "softmax(z/T) on the test set, pooled over seeds."),
    ("confusion", "Confusion matrices", "Per device, summed over seeds."),
    ("coefficient_plot", "Spectrum-correction coefficients", "c_d(f) in dB per device and reference."),
)
DATA_FILES = ("table2", "table3", "fig3_csv", "calibration", "confusion_csv", "significance", "summary")

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #ddd}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:0.5em 1em}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.8em}code{font-size:0.9em}
.missing{color:#b22222}"""


def markdown_to_html(text: str) -> str:
    """The subset our Markdown files use: '# ' headings, pipe tables, paragraphs."""
    out, table = [], []

    def flush():
        if not table:
            return
        rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
                for line in table if not re.fullmatch(r"\|(-+\|)+", line.strip())]
        head, body = rows[0], rows[1:]
        out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>")
        for r in body:
            out.append("<tr>" + "".join(
                f'<td class="missing">{html.escape(c)}</td>' if c == "missing" else f"<td>{html.escape(c)}</td>"
                for c in r) + "</tr>")
        out.append("</tbody></table>")
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h3>{html.escape(line[2:])}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def embed_png(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def lineage_rows(provenance_files: Iterable) -> list[dict]:
    """One row per run provenance record: the run, git commit, SLURM job, host and input hashes."""
    rows = []
    for f in provenance_files:
        f = Path(f)
        if not f.is_file():
            rows.append({"record": str(f), "missing": True})
            continue
        rec = json.loads(f.read_text())
        wc = rec.get("wildcards", {})
        code, slurm = rec.get("code", {}), rec.get("slurm") or {}

        def first_hash(key):
            hashes = rec.get("inputs", {}).get(key, {})
            return next(iter(hashes.values()), None)

        rows.append({
            "record": str(f),
            "run": "/".join(str(wc.get(k, "?")) for k in ("correction", "temperature", "loss", "seed")),
            "created": rec.get("created"),
            "git_commit": code.get("git_commit"),
            "git_dirty": code.get("git_dirty"),
            "slurm_job_id": slurm.get("slurm_job_id"),
            "host": rec.get("host", {}).get("hostname"),
            "train_cache": first_hash("train"),
            "evaluate_cache": first_hash("evaluate"),
            "stats": first_hash("stats"),
            "coefficients": first_hash("coefficients"),
        })
    return rows


def _lineage_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>No run provenance records.</p>"
    short = lambda h: "–" if not h else html.escape(str(h)[:12])  # noqa: E731
    head = ["run (correction/T/loss/seed)", "created", "git commit", "SLURM job", "host",
            "train cache sha256", "evaluate cache sha256", "stats sha256", "coefficients sha256"]
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        if r.get("missing"):
            out.append(f'<tr><td class="missing" colspan="{len(head)}">{html.escape(r["record"])}: '
                       "no provenance record</td></tr>")
            continue
        commit = short(r["git_commit"]) + (" (dirty)" if r["git_dirty"] else "")
        cells = [html.escape(r["run"]), html.escape(str(r["created"] or "–")), commit,
                 html.escape(str(r["slurm_job_id"] or "–")), html.escape(str(r["host"] or "–")),
                 short(r["train_cache"]), short(r["evaluate_cache"]), short(r["stats"]), short(r["coefficients"])]
        out.append("<tr>" + "".join(f"<td><code>{c}</code></td>" for c in cells) + "</tr>")
    out.append("</tbody></table><p>Hashes shortened to 12 hex digits; full values in each run's provenance.json. "
               "<code>heatedasc lineage &lt;file&gt;</code> audits them against the disk.</p>")
    return "\n".join(out)


def render_report(*, artefacts: Mapping[str, str], config: Mapping, selection: str,
                  provenance_files: Iterable, n_runs: int, origin: str, base: str | Path) -> str:
    """The HTML text. `artefacts` maps artefact keys to paths; absent files are listed as missing."""
    import yaml

    base = Path(base)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Heated-up softmax + spectrum "
             f"correction: report</title><style>{CSS}</style></head><body>",
             "<h1>Acoustic scene classification for mismatched devices: heated-up softmax and spectrum "
             "correction — reproduction report</h1>",
             f"<p>Generated {now} by {html.escape(origin)}; {n_runs} training run(s).</p>",
             f'<section id="selection"><h2>Model selection</h2><div class="warn"><p>{html.escape(selection)}</p>'
             "</div></section>"]

    def missing(key, title):
        return f'<section id="{key}"><h2>{title}</h2><p class="missing">missing: {html.escape(str(artefacts.get(key)))}</p></section>'

    parts.append("<h2>Tables</h2>")
    for key, title, caption in TABLES:
        p = artefacts.get(key)
        if not p or not Path(p).is_file():
            parts.append(missing(key, title))
            continue
        parts.append(f'<section id="{key}"><h2>{title}</h2><p><em>{html.escape(caption)}</em></p>'
                     f"{markdown_to_html(Path(p).read_text())}</section>")
    parts.append("<h2>Figures</h2>")
    for key, title, caption in FIGURES:
        p = artefacts.get(key)
        if not p or not Path(p).is_file():
            if key != "coefficient_plot":  # optional: produced by the coefficients stage, not the report
                parts.append(missing(key, title))
            continue
        parts.append(f'<section id="{key}"><h2>{title}</h2><p><em>{html.escape(caption)}</em></p>'
                     f'<img alt="{html.escape(title)}" src="{embed_png(p)}"></section>')
    links = []
    for key in DATA_FILES:
        p = artefacts.get(key)
        if p and Path(p).is_file():
            rel = Path(p).resolve()
            try:
                rel = rel.relative_to(base.resolve())
            except ValueError:
                pass
            links.append(f'<li><a href="{html.escape(rel.as_posix())}">{html.escape(Path(p).name)}</a> ({key})</li>')
    parts.append('<section id="data"><h2>Data behind the report</h2><ul>' + "".join(links) + "</ul></section>")
    parts.append('<section id="lineage"><h2>Lineage of the training runs</h2>'
                 + _lineage_html(lineage_rows(provenance_files)) + "</section>")
    cfg_text = yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)), sort_keys=False)
    parts.append('<section id="config"><h2>Effective configuration</h2><pre>' + html.escape(cfg_text)
                 + "</pre></section></body></html>")
    return "\n".join(parts)


def write_report(path, **kwargs) -> None:
    write_text(path, render_report(base=Path(path).parent, **kwargs))
