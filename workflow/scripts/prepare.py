"""Snakemake adapter: validate the TAU layout, resample/downmix/fix length, write the manifest."""

from pathlib import Path

from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.prepare import prepare_dataset
from heatedasc.provenance import record_job

with job_logging(snakemake.log[0], "heatedasc.prepare") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
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
    record_job(snakemake, "prepare")
