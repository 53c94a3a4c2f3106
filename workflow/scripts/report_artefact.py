"""Snakemake adapter of every report rule: renders the registered artefact named by params.artefact."""

from heatedasc.logutil import job_logging
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.report import render_job

name = snakemake.params.artefact
with job_logging(snakemake.log[0], f"heatedasc.{name}") as log:
    pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
    outputs = {k: v for k, v in snakemake.output.items() if k != "provenance"}
    inputs = {k: v for k, v in snakemake.input.items() if k != "recipe"}  # the rerun token is bookkeeping
    render_job(name, inputs=inputs, outputs=outputs, config=snakemake.params.config,
               origin=f"the Snakemake rule {name}")
    record_job(snakemake, name)
    log.info("%s: wrote %s", name, ", ".join(outputs.values()))
