# Stage 4: one training run per key of the sweep (correction, T, loss, seed, ...: RUNS) — the only GPU rule.


rule train:
    input:
        train=path("cache", split="train"),
        train_index=path("cache_index", split="train"),
        evaluate=path("cache", split="evaluate"),
        evaluate_index=path("cache_index", split="evaluate"),
        stats=path("stats"),
        coefficients=path("coefficients"),
    output:
        **{name.split(".")[0]: run_file(name) for name in RUN_FILES},
    params:
        model=config["model"],
        loss=config["loss"],
        train=config["train"],
        execution=EXECUTION["train"],
    threads: rule_resources("train")["cpus_per_task"]
    log:
        log_path("train", RUNS.relative_pattern()),
    benchmark:
        benchmark_path("train", RUNS.relative_pattern())
    resources:
        **rule_resources("train"),
    script:
        "../scripts/train.py"
