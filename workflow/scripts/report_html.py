"""Snakemake adapter: the self-contained HTML report (tables, embedded figures, config, lineage)."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import render_html

with job_logging(snakemake.log[0], "heatedasc.report_html"):
    runs = load_runs(list(snakemake.input.metrics))
    artefacts = dict(snakemake.input.items())
    artefacts.update(report_html=snakemake.output.report_html)
    render_html(runs, snakemake.params.config, artefacts, provenance_files=list(snakemake.input.run_provenance),
                origin="the Snakemake rule report_html")
    record_job(snakemake, "report_html")
