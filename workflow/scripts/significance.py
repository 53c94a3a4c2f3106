"""Snakemake adapter: the configured paired comparisons (report.comparisons) with t-intervals."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import render_significance

with job_logging(snakemake.log[0], "heatedasc.significance"):
    runs = load_runs(list(snakemake.input.metrics))
    render_significance(runs, snakemake.params.report, dict(snakemake.output.items()))
    record_job(snakemake, "significance")
