"""Snakemake adapter: per-file mean magnitude spectra of the training triplets."""

from heatedasc.correction import compute_mean_spectra, save_mean_spectra
from heatedasc.dsp import set_clip_workers
from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.tau import read_manifest, without_holdout

with run_job(snakemake) as log:
    set_clip_workers(snakemake.threads)  # whole clips in parallel on the job's cores (no effect on results)
    p = snakemake.params
    manifest = without_holdout(read_manifest(snakemake.input.manifest), p.holdout)
    spectra = compute_mean_spectra(
        manifest,
        snakemake.input.audio,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        remove_dc=p.remove_dc,
        devices=p.devices,
        batch_size=p.execution["batch_size"],
        progress=show_progress(),
    )
    save_mean_spectra(snakemake.output.out, spectra)
    log.info("mean spectra of %d triplet files", len(spectra["filenames"]))
