# Stage 5: the paper's artefacts and the extras from the per-run outputs (no retraining).
# One rule per artefact of the report registry (heatedasc.report.registry): its outputs, inputs and
# params all come from there, and every rule runs the same adapter, which renders the artefact named
# by params.artefact with the same code as `heatedasc report`.

for _artefact in REPORT:

    rule:
        name:
            _artefact.name
        input:
            **REPORT.rule_inputs(_artefact, run_files=all_run_files, fig2_embeddings=fig2_embeddings(), path=path),
        output:
            **{key: directory(path(key)) if key in _artefact.folders else shown(key) for key in _artefact.outputs},
            provenance=path(f"{_artefact.name}_prov"),
        params:
            artefact=_artefact.name,
            config=_artefact.params(config),
        log:
            log_path(_artefact.name),
        benchmark:
            benchmark_path(_artefact.name)
        resources:
            **rule_resources("report"),
        script:
            "../scripts/report_artefact.py"
