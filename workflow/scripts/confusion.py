"""Snakemake adapter: device-wise confusion matrices of the configured run sets, summed over seeds."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import render_confusion

with job_logging(snakemake.log[0], "heatedasc.confusion"):
    runs = load_runs(list(snakemake.input.metrics))
    render_confusion(runs, snakemake.params.report, dict(snakemake.output.items()))
    record_job(snakemake, "confusion")
