# Stage 3: log-mel features (docs/reproduction.md §3) with the correction folded into per-device filterbanks,
# standardised with float64 training statistics, cached as float16 per (correction, split).

FEATURE_PARAMS = {
    k: config["features"][k]
    for k in ("n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_offset", "remove_dc")
}


rule feature_stats:
    input:
        manifest=path("manifest"),
        audio=path("prepared_audio"),
        coefficients=path("coefficients"),
    output:
        out=path("stats"),
        provenance=path("stats_prov"),
    params:
        holdout=HOLDOUT,
        extractor=FEATURE_PARAMS,
        sample_rate=config["data"]["sample_rate"],
        devices=config["data"]["devices"],
        execution=EXECUTION["features"],
    threads: rule_resources("features")["cpus_per_task"]
    log:
        log_path("feature_stats", "{correction}"),
    benchmark:
        benchmark_path("feature_stats", "{correction}")
    resources:
        **rule_resources("features"),
    script:
        "../scripts/feature_stats.py"


rule features:
    input:
        manifest=path("manifest"),
        audio=path("prepared_audio"),
        coefficients=path("coefficients"),
        stats=path("stats"),
    output:
        cache=path("cache"),
        index=path("cache_index"),
        provenance=path("cache_prov"),
    params:
        extractor=FEATURE_PARAMS,
        sample_rate=config["data"]["sample_rate"],
        devices=config["data"]["devices"],
        execution=EXECUTION["features"],
    threads: rule_resources("features")["cpus_per_task"]
    log:
        log_path("features", "{correction}-{split}"),
    benchmark:
        benchmark_path("features", "{correction}-{split}")
    resources:
        **rule_resources("features"),
    script:
        "../scripts/features.py"
