# Stage 0 (synthetic data only) and stage 1: the TAU-layout data root -> resampled, downmixed,
# length-fixed audio and a validated manifest.

if config["synth"]["enabled"]:

    rule synthesize:
        output:
            meta=path("meta"),
            folds=expand(path("fold"), fold=["train", "evaluate", "test"]),
            audio=directory(path("raw_audio")),
            provenance=path("synth_prov"),
        params:
            synth={k: v for k, v in config["synth"].items() if k != "enabled"},
        log:
            log_path("synthesize"),
        benchmark:
            benchmark_path("synthesize")
        resources:
            **rule_resources("synthesize"),
        script:
            "../scripts/synthesize.py"


rule prepare:
    input:
        meta=path("meta"),
        folds=expand(path("fold"), fold=["train", "evaluate", "test"]),
        audio=path("raw_audio"),
    output:
        audio=directory(path("prepared_audio")),
        manifest=path("manifest"),
        summary=path("prepare_summary"),
        report=path("prepare_report"),
        provenance=path("prepare_prov"),
    params:
        sample_rate=config["data"]["sample_rate"],
        duration_s=config["data"]["duration_s"],
        length_tolerance=config["data"]["length_tolerance"],
        on_truncated=config["data"]["on_truncated"],
        devices=config["data"]["devices"],
    log:
        log_path("prepare"),
    benchmark:
        benchmark_path("prepare")
    resources:
        **rule_resources("prepare"),
    script:
        "../scripts/prepare.py"
