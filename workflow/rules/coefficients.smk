# Stage 2: spectrum correction (docs/reproduction.md §2). Mean spectra of the training triplets are computed once;
# each correction's coefficients are a cheap reduction of them.


rule mean_spectra:
    input:
        manifest=path("manifest"),
        audio=path("prepared_audio"),
    output:
        out=path("mean_spectra"),
        provenance=path("mean_spectra_prov"),
    params:
        holdout=HOLDOUT,
        n_fft=config["features"]["n_fft"],
        hop_length=config["features"]["hop_length"],
        remove_dc=config["features"]["remove_dc"],
        devices=config["data"]["devices"],
        execution=EXECUTION["features"],
    threads: rule_resources("features")["cpus_per_task"]
    log:
        log_path("mean_spectra"),
    benchmark:
        benchmark_path("mean_spectra")
    resources:
        **rule_resources("features"),
    script:
        "../scripts/mean_spectra.py"


rule coefficients:
    input:
        spectra=path("mean_spectra"),
    output:
        out=path("coefficients"),
        provenance=path("coefficients_prov"),
    params:
        reference_devices=lambda wc: config["correction"]["references"][wc.correction],
        estimator=config["correction"]["estimator"],
        devices=config["data"]["devices"],
        sample_rate=config["data"]["sample_rate"],
        n_fft=config["features"]["n_fft"],
    log:
        log_path("coefficients", "{correction}"),
    benchmark:
        benchmark_path("coefficients", "{correction}")
    resources:
        **rule_resources("coefficients"),
    script:
        "../scripts/coefficients.py"


rule coefficient_plot:
    input:
        coefficients=expand(path("coefficients"), correction=SWEEP["correction"]),
    output:
        out=shown("coefficient_plot"),
        provenance=path("coefficient_plot_prov"),
    log:
        log_path("coefficient_plot"),
    benchmark:
        benchmark_path("coefficient_plot")
    resources:
        **rule_resources("report"),
    script:
        "../scripts/coefficient_plot.py"
