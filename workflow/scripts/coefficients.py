"""Snakemake adapter: spectrum-correction coefficients c_d(f) for one correction."""

from heatedasc.correction import estimate_coefficients, load_mean_spectra, save_coefficients
from heatedasc.job import run_job

with run_job(snakemake) as log:
    p = snakemake.params
    spectra = load_mean_spectra(snakemake.input.spectra)
    coefficients = estimate_coefficients(
        spectra, reference_devices=list(p.reference_devices), estimator=p.estimator, devices=p.devices
    )
    save_coefficients(
        snakemake.output.out,
        coefficients,
        correction=snakemake.wildcards.correction,
        reference_devices=list(p.reference_devices),
        estimator=p.estimator,
        files=list(spectra["filenames"]),
        sample_rate=p.sample_rate,
        n_fft=p.n_fft,
    )
    log.info("%s: coefficients for devices %s", snakemake.wildcards.correction, sorted(coefficients))
