"""Snakemake adapter: per-mel-bin standardisation statistics from the training split (float64 sums)."""

from heatedasc.dsp import set_clip_workers
from heatedasc.feature_stats import compute_feature_stats, save_stats
from heatedasc.features import make_extractor
from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.tau import read_manifest, without_holdout

with run_job(snakemake) as log:
    set_clip_workers(snakemake.threads)  # whole clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    extractor = make_extractor(snakemake.input.coefficients, sample_rate=p.sample_rate, devices=p.devices,
                               device=p.execution["device"], **p.extractor)
    manifest = without_holdout(read_manifest(snakemake.input.manifest), p.holdout)
    stats = compute_feature_stats(manifest, snakemake.input.audio, extractor, batch_size=p.execution["batch_size"],
                                  progress=show_progress())
    save_stats(snakemake.output.out, stats)
    log.info("stats over %d frames of %d training files (on %s)", stats["n_frames"], stats["n_files"],
             extractor.filterbanks.device)
