"""Snakemake adapter: one training run (correction, T, loss, seed) and its provenance record."""

from pathlib import Path

from heatedasc.logutil import job_logging, show_progress
from heatedasc.pinning import apply as pin_cpu
from heatedasc.provenance import record_job
from heatedasc.train import run_training

with job_logging(snakemake.log[0], "heatedasc.train") as log:
    cpu = pin_cpu(snakemake.config.get("cpu"))  # kernels and threads (heatedasc.pinning)
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
        threads=cpu["threads"],  # cpu.threads, never the machine's cores
        progress=show_progress(),
    )
    record_job(snakemake, "train")
    log.info("%s T=%s %s seed %s: acc A %.3f, avg BC %.3f (best epoch %s, selection=%s)",
             wc.correction, wc.temperature, wc.loss, wc.seed, metrics["acc_a"], metrics["avg_bc"],
             metrics["best_epoch"], metrics["selection"])
