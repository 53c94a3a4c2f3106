"""Snakemake adapter: Table 2, Table 3 and the summary metrics from the per-run metrics."""

from heatedasc.fileio import write_json
from heatedasc.logutil import job_logging
from heatedasc.provenance import record_job
from heatedasc.report import load_runs, make_table2, make_table3, summary_metrics, write_table

with job_logging(snakemake.log[0], "heatedasc.tables") as log:
    cfg, paper, out = snakemake.params.report, snakemake.params.paper, snakemake.output
    runs = load_runs(list(snakemake.input.metrics))
    table2 = make_table2(runs, temperature=cfg["table2_temperature"], paper_table2=paper["table2"])
    write_table(table2, out.table2, out.table2_md, title=f"Table 2: accuracy (%) at T = {cfg['table2_temperature']}", selection=runs["selection"].iloc[0])
    table3 = make_table3(
        runs, rows=cfg["table3_rows"], quoted=paper["table3_quoted"], paper_ours=paper["table3_ours"]
    )
    write_table(table3, out.table3, out.table3_md, title="Table 3: comparison on the test set (fold1_evaluate)", selection=runs["selection"].iloc[0])
    write_json(out.summary, summary_metrics(runs))
    record_job(snakemake, "tables")
    log.info("tables from %d runs", len(runs))
