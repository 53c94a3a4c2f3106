"""Snakemake adapter: one training run (correction, T, loss, seed) and its provenance record."""

from pathlib import Path

from heatedasc.job import run_job
from heatedasc.logutil import show_progress
from heatedasc.train import run_training

with run_job(snakemake) as log:
    wc = snakemake.wildcards
    out_dir = Path(snakemake.output.metrics).parent
    metrics = run_training(
        train_npy=snakemake.input.train,
        train_index=snakemake.input.train_index,
        eval_npy=snakemake.input.evaluate,
        eval_index=snakemake.input.evaluate_index,
        out_dir=out_dir,
        correction=wc.correction,
        temperature=float(wc.temperature),
        loss=wc.loss,
        seed=int(wc.seed),
        model_cfg=dict(snakemake.params.model),
        loss_cfg=dict(snakemake.params.loss),
        train_cfg=dict(snakemake.params.train),
        execution_cfg=dict(snakemake.params.execution),
        threads=snakemake.config["cpu"]["threads"],  # cpu.threads (heatedasc.pinning), never the machine's cores
        progress=show_progress(),
    )
    log.info("%s T=%s %s seed %s: acc A %.3f, avg BC %.3f (best epoch %s, selection=%s)",
             wc.correction, wc.temperature, wc.loss, wc.seed, metrics["acc_a"], metrics["avg_bc"],
             metrics["best_epoch"], metrics["selection"])
