"""Snakemake adapter: per-file mean magnitude spectra of the training triplets."""

from heatedasc.correction import compute_mean_spectra, save_mean_spectra
from heatedasc.dsp import set_clip_workers
from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.tau import read_manifest, without_holdout

with job_logging(snakemake.log[0], "heatedasc.mean_spectra") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    set_clip_workers(snakemake.threads)  # clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    manifest = without_holdout(read_manifest(snakemake.input.manifest), p.holdout)
    spectra = compute_mean_spectra(
        manifest,
        snakemake.input.audio,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        remove_dc=p.remove_dc,
        devices=p.devices,
        batch_size=p.batch_size,
        progress=show_progress(),
    )
    save_mean_spectra(snakemake.output.out, spectra)
    record_job(snakemake, "mean_spectra")
    log.info("mean spectra of %d triplet files", len(spectra["filenames"]))
