"""Snakemake adapter: per-mel-bin standardisation statistics from the training split (float64 sums)."""

import pandas as pd
import torch

from heatedasc.correction import load_coefficients
from heatedasc.features import LogMelExtractor, compute_feature_stats, save_stats
from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job

with job_logging(snakemake.log[0], "heatedasc.feature_stats") as log:
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    coefficients, _ = load_coefficients(snakemake.input.coefficients)
    extractor = LogMelExtractor(sample_rate=p.sample_rate, coefficients=coefficients, devices=p.devices, **p.extractor)
    manifest = pd.read_csv(snakemake.input.manifest, dtype={"location": str, "segment": str})
    stats = compute_feature_stats(manifest, snakemake.input.audio, extractor, batch_size=p.batch_size, progress=True)
    save_stats(snakemake.output.out, stats)
    record_job(snakemake, "feature_stats")
    log.info("stats over %d frames of %d training files", stats["n_frames"], stats["n_files"])
