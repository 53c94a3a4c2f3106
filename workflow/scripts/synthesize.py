"""Snakemake adapter: write the synthetic TAU-layout dataset."""

from pathlib import Path

from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.synth import generate_dataset

with job_logging(snakemake.log[0], "heatedasc.synthesize") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    root = Path(snakemake.output.meta).parent
    summary = generate_dataset(root, **snakemake.params.synth, progress=show_progress())
    log.info("synthetic dataset at %s: %s", root, summary)
    record_job(snakemake, "synthesize")
