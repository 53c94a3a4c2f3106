"""Snakemake adapter: per-mel-bin standardisation statistics from the training split (float64 sums)."""

from heatedasc.dsp import set_clip_workers
from heatedasc.feature_stats import compute_feature_stats, save_stats
from heatedasc.features import make_extractor
from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.tau import read_manifest, without_holdout

with job_logging(snakemake.log[0], "heatedasc.feature_stats") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    set_clip_workers(snakemake.threads)  # clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    extractor = make_extractor(snakemake.input.coefficients, sample_rate=p.sample_rate, devices=p.devices,
                               device=p.device, **p.extractor)
    manifest = without_holdout(read_manifest(snakemake.input.manifest), p.holdout)
    stats = compute_feature_stats(manifest, snakemake.input.audio, extractor, batch_size=p.batch_size, progress=show_progress())
    save_stats(snakemake.output.out, stats)
    record_job(snakemake, "feature_stats")
    log.info("stats over %d frames of %d training files (on %s)", stats["n_frames"], stats["n_files"],
             extractor.filterbanks.device)
