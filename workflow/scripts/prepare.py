"""Snakemake adapter: validate the TAU layout, resample/downmix/fix length, write the manifest."""

from pathlib import Path

from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.prepare import prepare_dataset

with run_job(snakemake) as log:
    p = snakemake.params
    root = Path(snakemake.input.meta).parent  # the data root: meta.csv sits at its top
    manifest = prepare_dataset(
        root,
        snakemake.output.audio,
        snakemake.output.manifest,
        snakemake.output.summary,
        snakemake.output.report,
        sample_rate=p.sample_rate,
        duration_s=p.duration_s,
        length_tolerance=p.length_tolerance,
        devices=p.devices,
        on_truncated=p.on_truncated,
        progress=show_progress(),
    )
    log.info("prepared %d files from %s", len(manifest), root)
