"""Snakemake adapter: Fig. 2, PCA of the GAP embeddings for the configured temperatures."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report_render import render_fig2

with job_logging(snakemake.log[0], "heatedasc.fig2"):
    files = {float(t): snakemake.input.get(f"T{t}") for t in snakemake.params.temperatures}
    render_fig2(files, dict(snakemake.output.items()))
    record_job(snakemake, "fig2")
