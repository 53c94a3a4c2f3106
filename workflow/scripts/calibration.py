"""Snakemake adapter: ECE table and reliability diagrams of softmax(z/T) from the saved predictions."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs
from heatedasc.report_render import grid_axes, render_calibration

with job_logging(snakemake.log[0], "heatedasc.calibration") as log:
    runs = load_runs(list(snakemake.input.metrics))
    sweep = grid_axes({"sweep": snakemake.params.sweep}, runs)
    render_calibration(runs, snakemake.params.report, sweep, dict(snakemake.output.items()))
    record_job(snakemake, "calibration")
    log.info("calibration from %d runs", len(runs))
