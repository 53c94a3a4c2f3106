"""Snakemake adapter: the standardised float16 log-mel cache of one (correction, split)."""

import pandas as pd
import torch

from heatedasc.correction import load_coefficients
from heatedasc.features import LogMelExtractor, build_feature_cache, load_stats
from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job

with job_logging(snakemake.log[0], "heatedasc.features") as log:
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    coefficients, _ = load_coefficients(snakemake.input.coefficients)
    extractor = LogMelExtractor(sample_rate=p.sample_rate, coefficients=coefficients, devices=p.devices, **p.extractor)
    manifest = pd.read_csv(snakemake.input.manifest, dtype={"location": str, "segment": str})
    info = build_feature_cache(
        manifest,
        snakemake.wildcards.split,
        snakemake.input.audio,
        extractor,
        load_stats(snakemake.input.stats),
        snakemake.output.cache,
        snakemake.output.index,
        batch_size=p.batch_size,
        progress=True,
    )
    record_job(snakemake, "features")
    log.info("%s/%s cache: %s", snakemake.wildcards.correction, snakemake.wildcards.split, info)
