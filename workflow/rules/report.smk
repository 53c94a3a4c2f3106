# Stage 5: the paper's artefacts and the extras from the per-run outputs (no retraining).
# Every script calls heatedasc.report_render, the same code as `heatedasc report`.

REPORT_CFG = config["report"]
REPORT_CODE = src_files("report", "report_render")


rule tables:
    input:
        metrics=all_run_files("metrics.json"),
        code=REPORT_CODE,
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
        code=REPORT_CODE,
    output:
        fig3=path("fig3"),
        fig3_pdf=path("fig3_pdf"),
        fig3_csv=path("fig3_csv"),
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
        code=REPORT_CODE,
    output:
        fig2=path("fig2"),
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


rule calibration:
    input:
        metrics=all_run_files("metrics.json"),
        predictions=all_run_files("predictions.npz"),
        code=REPORT_CODE + src_files("report_extras"),
    output:
        calibration=path("calibration"),
        calibration_md=path("calibration_md"),
        reliability=path("reliability"),
        provenance=path("calibration_prov"),
    params:
        report=REPORT_CFG,
        sweep=SWEEP,
    log:
        log_path("calibration"),
    benchmark:
        benchmark_path("calibration")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/calibration.py"


rule confusion:
    input:
        metrics=all_run_files("metrics.json"),
        code=REPORT_CODE + src_files("report_extras"),
    output:
        confusion=path("confusion"),
        confusion_csv=path("confusion_csv"),
        provenance=path("confusion_prov"),
    params:
        report=REPORT_CFG,
    log:
        log_path("confusion"),
    benchmark:
        benchmark_path("confusion")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/confusion.py"


rule significance:
    input:
        metrics=all_run_files("metrics.json"),
        code=REPORT_CODE + src_files("report_extras"),
    output:
        significance=path("significance"),
        significance_md=path("significance_md"),
        provenance=path("significance_prov"),
    params:
        report=REPORT_CFG,
    log:
        log_path("significance"),
    benchmark:
        benchmark_path("significance")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/significance.py"


# One self-contained HTML page: every table and figure above, the selection note, the effective
# configuration and the lineage of the training runs.
rule report_html:
    input:
        metrics=all_run_files("metrics.json"),
        run_provenance=all_run_files("provenance.json"),
        **{
            key: path(key)
            for key in (
                "table2", "table2_md", "table3", "table3_md", "summary", "fig3", "fig3_csv", "fig2",
                "calibration", "calibration_md", "reliability", "confusion", "confusion_csv",
                "significance", "significance_md", "coefficient_plot",
            )
        },
        code=REPORT_CODE + src_files("report_html"),
    output:
        report_html=path("report_html"),
        provenance=path("report_html_prov"),
    params:
        config=config,
    log:
        log_path("report_html"),
    benchmark:
        benchmark_path("report_html")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/report_html.py"
