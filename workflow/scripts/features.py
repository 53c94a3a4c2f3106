"""Snakemake adapter: the standardised float16 log-mel cache of one (correction, split)."""

from heatedasc.dsp import set_clip_workers
from heatedasc.feature_stats import load_stats
from heatedasc.features import build_feature_cache, make_extractor
from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.tau import read_manifest

with run_job(snakemake) as log:
    set_clip_workers(snakemake.threads)  # whole clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    extractor = make_extractor(snakemake.input.coefficients, sample_rate=p.sample_rate, devices=p.devices,
                               device=p.execution["device"], **p.extractor)
    info = build_feature_cache(
        read_manifest(snakemake.input.manifest),
        snakemake.wildcards.split,
        snakemake.input.audio,
        extractor,
        load_stats(snakemake.input.stats),
        snakemake.output.cache,
        snakemake.output.index,
        batch_size=p.execution["batch_size"],
        progress=show_progress(),
    )
    log.info("%s/%s cache (on %s): %s", snakemake.wildcards.correction, snakemake.wildcards.split,
             extractor.filterbanks.device, info)
