"""Snakemake adapter: the standardised float16 log-mel cache of one (correction, split)."""

from heatedasc.dsp import set_clip_workers
from heatedasc.feature_stats import load_stats
from heatedasc.features import build_feature_cache, make_extractor
from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.tau import read_manifest

with job_logging(snakemake.log[0], "heatedasc.features") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    set_clip_workers(snakemake.threads)  # clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    extractor = make_extractor(snakemake.input.coefficients, sample_rate=p.sample_rate, devices=p.devices,
                               device=p.device, **p.extractor)
    info = build_feature_cache(
        read_manifest(snakemake.input.manifest),
        snakemake.wildcards.split,
        snakemake.input.audio,
        extractor,
        load_stats(snakemake.input.stats),
        snakemake.output.cache,
        snakemake.output.index,
        batch_size=p.batch_size,
        progress=show_progress(),
    )
    record_job(snakemake, "features")
    log.info("%s/%s cache (on %s): %s", snakemake.wildcards.correction, snakemake.wildcards.split,
             extractor.filterbanks.device, info)
