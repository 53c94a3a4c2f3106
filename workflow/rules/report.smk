# Stage 5: the paper's artefacts from the per-run metrics.

REPORT_CFG = config["report"]


def fig2_embeddings(wildcards=None):
    """Embeddings of the Fig. 2 runs that the configured grid contains (missing T are drawn as missing)."""
    files = {}
    for t in REPORT_CFG["fig2_temperatures"]:
        runs = sweep_runs(
            correction=REPORT_CFG["fig2_correction"],
            temperature=format_temperature(t),
            loss=REPORT_CFG["fig2_loss"],
            seed=REPORT_CFG["fig2_seed"],
        )
        if runs:
            files[format_temperature(t)] = run_file("embeddings.npz", **runs[0])
    return files


rule tables:
    input:
        metrics=all_run_files("metrics.json"),
        code=src_files("report"),
    output:
        table2=path("table2"),
        table2_md=path("table2_md"),
        table3=path("table3"),
        table3_md=path("table3_md"),
        summary=path("summary"),
        provenance=path("tables_prov"),
    params:
        report=REPORT_CFG,
        paper=config["paper"],
    log:
        log_path("tables"),
    benchmark:
        benchmark_path("tables")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/tables.py"


rule fig3:
    input:
        metrics=all_run_files("metrics.json"),
        code=src_files("report"),
    output:
        png=path("fig3"),
        pdf=path("fig3_pdf"),
        csv=path("fig3_csv"),
        provenance=path("fig3_prov"),
    params:
        report=REPORT_CFG,
        paper=config["paper"],
    log:
        log_path("fig3"),
    benchmark:
        benchmark_path("fig3")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/fig3.py"


rule fig2:
    input:
        unpack(lambda wc: {f"T{t}": p for t, p in fig2_embeddings().items()}),
        code=src_files("report"),
    output:
        out=path("fig2"),
        provenance=path("fig2_prov"),
    params:
        temperatures=[format_temperature(t) for t in REPORT_CFG["fig2_temperatures"]],
    log:
        log_path("fig2"),
    benchmark:
        benchmark_path("fig2")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/fig2.py"
