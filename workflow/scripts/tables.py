"""Snakemake adapter: Table 2, Table 3 and the summary metrics from the per-run metrics."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import render_tables

with job_logging(snakemake.log[0], "heatedasc.tables") as log:
    runs = load_runs(list(snakemake.input.metrics))
    render_tables(runs, snakemake.params.report, snakemake.params.paper, dict(snakemake.output.items()))
    record_job(snakemake, "tables")
    log.info("tables from %d runs", len(runs))
