"""Rendering artefacts of the registry: one artefact (the Snakemake rules, through
workflow/scripts/report_artefact.py) or all of them from whatever runs exist (`heatedasc report`).
Both build a RenderContext (heatedasc.report.context) and call render_artefact, so both write the same files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from heatedasc.fileio import atomic_path, write_text
from heatedasc.report.context import RenderContext
from heatedasc.report.registry import FIG2_INPUT_PREFIX, REGISTRY, Artefact, Registry
from heatedasc.report.runs import discover_runs, fig2_embeddings, load_runs


def render_artefact(artefact: Artefact, ctx: RenderContext, out: Mapping[str, str]) -> None:
    """Run the artefact's renderer, write the tables it returns as CSV and their Markdown documents."""
    absent = [k for k in artefact.outputs if k not in out]
    if absent:
        raise ValueError(f"{artefact.name}: no path given for output(s) {', '.join(absent)}")
    tables = artefact.render(ctx, out) or {}
    for key, frame in tables.items():
        if key not in artefact.outputs:
            raise ValueError(f"{artefact.name}: the renderer returned table {key!r}, which the registry does not "
                             f"declare (outputs: {', '.join(artefact.outputs)})")
        with atomic_path(out[key]) as tmp:
            frame.to_csv(tmp, index=False)
    for table in artefact.tables:
        write_text(out[table.markdown], table.document_from(out[table.csv], ctx).markdown())
    unwritten = [out[k] for k in artefact.outputs
                 if not (Path(out[k]).is_dir() if k in artefact.folders else Path(out[k]).is_file())]
    if unwritten:
        raise ValueError(f"{artefact.name}: the renderer did not write {', '.join(unwritten)}")


def render_all(results_dir: str | os.PathLike, config: Mapping, out_dir: str | os.PathLike, *,
               registry: Registry = REGISTRY) -> dict[str, str]:
    """Every artefact from the runs found under `results_dir`, written under `out_dir` (never over the workflow's
    own, tracked report: that one is Snakemake's to make); returns output key -> path written."""
    results, out = Path(results_dir), Path(out_dir)
    if out.resolve() == results.resolve():
        raise ValueError(f"{out}: the report of whatever runs exist goes to its own folder, not over the "
                         f"workflow's {results} (whose files Snakemake and DVC track); pick another --out")
    runs = load_runs(discover_runs(results))
    paths = registry.paths(out)
    paths.update({f.key: os.path.join(str(results), f.path) for f in registry.upstream_figures})
    ctx = RenderContext(
        config=config, registry=registry, runs=runs, fig2_embeddings=fig2_embeddings(runs, config["report"]),
        provenance_files=[str(Path(d) / "provenance.json") for d in runs["run_dir"]], artefacts=paths,
        origin=f"`heatedasc report` from the {len(runs)} run(s) found under {results / 'runs'}")
    for artefact in registry.render_order():
        render_artefact(artefact, ctx, {k: paths[k] for k in artefact.outputs})
    return {k: paths[k] for k in registry.outputs()}


def _as_list(value) -> list[str | os.PathLike]:
    return [value] if isinstance(value, (str, os.PathLike)) else [str(v) for v in value]


def render_job(name: str, *, inputs: Mapping, outputs: Mapping[str, str], config: Mapping, origin: str,
               registry: Registry = REGISTRY) -> None:
    """One artefact from a Snakemake job's named inputs (as Registry.rule_inputs names them), outputs and
    params (`config`: the artefact's part of the configuration)."""
    artefact = registry[name]
    runs = load_runs(_as_list(inputs["metrics"])) if "metrics" in artefact.needs else None
    embeddings = {float(k[len(FIG2_INPUT_PREFIX):]): str(v) for k, v in inputs.items()
                  if k.startswith(FIG2_INPUT_PREFIX)}
    shown = set(registry.target_keys())
    artefacts = {k: str(v) for k, v in inputs.items() if k in shown}
    artefacts.update(outputs)
    ctx = RenderContext(config=config, registry=registry, runs=runs, fig2_embeddings=embeddings,
                        provenance_files=_as_list(inputs.get("run_provenance", [])), artefacts=artefacts,
                        origin=origin)
    render_artefact(artefact, ctx, outputs)
