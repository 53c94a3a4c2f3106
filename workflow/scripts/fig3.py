"""Snakemake adapter: Fig. 3, accuracy against temperature per correction."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import render_fig3

with job_logging(snakemake.log[0], "heatedasc.fig3"):
    runs = load_runs(list(snakemake.input.metrics))
    render_fig3(runs, snakemake.params.report, snakemake.params.paper, dict(snakemake.output.items()))
    record_job(snakemake, "fig3")
