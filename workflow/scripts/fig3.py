"""Snakemake adapter: Fig. 3, accuracy against temperature per correction."""

from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs, plot_fig3

with job_logging(snakemake.log[0], "heatedasc.fig3"):
    cfg, paper, out = snakemake.params.report, snakemake.params.paper, snakemake.output
    runs = load_runs(list(snakemake.input.metrics))
    plot_fig3(runs, out.png, out.csv, out_pdf=out.pdf, loss=cfg["fig3_loss"], paper_best=paper["table3_ours"]["Ref.ABC_T10"])
    record_job(snakemake, "fig3")
