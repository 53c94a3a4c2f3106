"""Snakemake adapter: the correction curves in dB per device and reference."""

from heatedasc.correction import plot_coefficients
from heatedasc.job import run_job

with run_job(snakemake):
    plot_coefficients(list(snakemake.input.coefficients), snakemake.output.out)
