"""Snakemake adapter: the correction curves in dB per device and reference."""

from heatedasc.correction import plot_coefficients
from heatedasc.logutil import job_logging
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job

with job_logging(snakemake.log[0], "heatedasc.coefficient_plot"):
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    plot_coefficients(list(snakemake.input.coefficients), snakemake.output.out, default_sample_rate=snakemake.params.sample_rate)
    record_job(snakemake, "coefficient_plot")
