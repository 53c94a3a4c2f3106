"""Snakemake adapter: Fig. 2, PCA of the GAP embeddings for the configured temperatures."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import plot_fig2
from heatedasc.tau import SCENES

with job_logging(snakemake.log[0], "heatedasc.fig2"):
    files = {float(t): snakemake.input.get(f"T{t}") for t in snakemake.params.temperatures}
    plot_fig2(files, snakemake.output.out, class_names=list(SCENES))
    record_job(snakemake, "fig2")
