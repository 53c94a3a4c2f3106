"""Snakemake adapter: spectrum-correction coefficients c_d(f) for one correction."""

from heatedasc.correction import estimate_coefficients, load_mean_spectra, save_coefficients
from heatedasc.logutil import job_logging
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job

with job_logging(snakemake.log[0], "heatedasc.coefficients") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
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
    record_job(snakemake, "coefficients")
    log.info("%s: coefficients for devices %s", snakemake.wildcards.correction, sorted(coefficients))
