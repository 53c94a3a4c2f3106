"""Snakemake adapter of every report rule: renders the registered artefact named by params.artefact."""

from heatedasc.job import WHY_INPUT, run_job
from heatedasc.report import render_job

name = snakemake.params.artefact
with run_job(snakemake) as log:
    outputs = {k: v for k, v in snakemake.output.items() if k != "provenance"}
    inputs = {k: v for k, v in snakemake.input.items() if k != WHY_INPUT}  # why a rerun: bookkeeping, not data
    render_job(name, inputs=inputs, outputs=outputs, config=snakemake.params.config,
               origin=f"the Snakemake rule {name}")
    log.info("%s: wrote %s", name, ", ".join(outputs.values()))
