"""Snakemake adapter: write the synthetic TAU-layout dataset."""

from pathlib import Path

from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.synth import generate_dataset

with run_job(snakemake) as log:
    root = Path(snakemake.output.meta).parent
    summary = generate_dataset(root, **snakemake.params.synth, progress=show_progress())
    log.info("synthetic dataset at %s: %s", root, summary)
