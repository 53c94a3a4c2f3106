# Helpers shared by every rule: the one place where output paths, wildcard formats and
# per-rule resources are defined.

import os

from heatedasc.report.registry import REGISTRY as REPORT
from heatedasc.runkey import RunLayout, format_temperature

DATA_ROOT = config["data"]["root"]
SWEEP = config["sweep"]
RUNS = RunLayout.from_config(config)  # the grid: one training run per key (heatedasc.runkey owns its paths)
EXECUTION = config["execution"]  # speed-only settings: passed to jobs as params.execution, never recorded

# Every path of the workflow, built from wildcards here and nowhere else.
PATHS = {
    "meta": os.path.join(DATA_ROOT, "meta.csv"),
    "fold": os.path.join(DATA_ROOT, "evaluation_setup", "fold1_{fold}.csv"),
    "raw_audio": os.path.join(DATA_ROOT, "audio"),
    "synth_prov": os.path.join(DATA_ROOT, "provenance.json"),  # only with synth.enabled: a generator-owned root
    "prepared_audio": "results/prepared/audio",
    "manifest": "results/prepared/manifest.csv",
    "prepare_summary": "results/prepared/summary.csv",
    "prepare_report": "results/prepared/report.json",
    "mean_spectra": "results/coefficients/mean_spectra.npz",
    "coefficients": "results/coefficients/{correction}.npz",
    "stats": "results/features/{correction}/stats.npz",
    "cache": "results/features/{correction}/{split}.npy",
    "cache_index": "results/features/{correction}/{split}.csv",
    "run": RUNS.pattern("results"),  # results/runs/{correction}/T{temperature}/{loss}/seed{seed}[/{axis}=...]
    # The report's outputs, provenance records and the coefficient plot it shows: from its registry
    # (heatedasc.report.registry), where each artefact is declared once.
    **REPORT.paths("results"),
    # One provenance record per job (heatedasc.job.run_job writes it; heatedasc.currency compares it).
    "prepare_prov": "results/prepared/provenance.json",
    "mean_spectra_prov": "results/coefficients/mean_spectra.provenance.json",
    "coefficients_prov": "results/coefficients/{correction}.provenance.json",
    "stats_prov": "results/features/{correction}/stats.provenance.json",
    "cache_prov": "results/features/{correction}/{split}.provenance.json",
    "coefficient_plot_prov": "results/coefficients/coefficients.provenance.json",
}
RUN_FILES = ("metrics.json", "history.csv", "model.pt", "embeddings.npz", "predictions.npz", "provenance.json")


def path(key, **wildcards):
    """The path pattern of `key` with the given wildcards filled in (the others stay wildcards)."""
    pattern = PATHS[key]
    for name, value in wildcards.items():
        pattern = pattern.replace(f"{{{name}}}", str(value))
    return pattern


def run_file(name, **wildcards):
    return os.path.join(path("run", **wildcards), name)


def log_path(rule_name, pattern=""):
    return os.path.join("logs", rule_name, f"{pattern or rule_name}.log")


def benchmark_path(rule_name, pattern=""):
    return os.path.join("logs", "benchmarks", rule_name, f"{pattern or rule_name}.tsv")


# With train.selection holdout, the validation locations are left out of every fit (correction, statistics).
HOLDOUT = (
    {"fraction": config["train"]["holdout_fraction"], "seed": config["train"]["holdout_seed"]}
    if config["train"]["selection"] == "holdout"
    else None
)
SPLITS = ["train", "evaluate"]


def sweep_runs(**only):
    """The wildcards of every run of the configured grid (the product over its axes), optionally only those
    whose axes equal the given values."""
    return [key.wildcards for key in RUNS.keys(**only)]


def all_run_files(name):
    return [run_file(name, **r) for r in sweep_runs()]


def rule_resources(stage):
    """Cluster resources of a stage from params.yaml `resources:` (default for stages not listed)."""
    res = dict(config["resources"].get("default", {}))
    res.update(config["resources"].get(stage, {}))
    return res


def report_outputs():
    """Every registered report output and the figures of other stages the report page shows."""
    return [path(key) for key in REPORT.target_keys()]


def fig2_embeddings(wildcards=None):
    """Embeddings of the Fig. 2 runs that the configured grid contains (missing T are drawn as missing)."""
    files = {}
    for t in config["report"]["fig2_temperatures"]:
        runs = sweep_runs(
            correction=config["report"]["fig2_correction"],
            temperature=format_temperature(t),
            loss=config["report"]["fig2_loss"],
            seed=config["report"]["fig2_seed"],
        )
        if runs:
            files[format_temperature(t)] = run_file("embeddings.npz", **runs[0])
    return files


CAPTIONS = os.path.join(".snakemake", "heatedasc", "captions")


def shown(key):
    """An output path, flagged for `snakemake --report` with its title and caption from the report registry when the
    report shows it (caption files are written from the registry, where each is declared once)."""
    if key not in REPORT.shown():
        return path(key)
    title, caption, category = REPORT.shown()[key]
    caption_file = os.path.abspath(os.path.join(CAPTIONS, f"{key}.rst"))
    text = f"**{title}.** {caption}\n"
    if not os.path.isfile(caption_file) or open(caption_file).read() != text:
        os.makedirs(CAPTIONS, exist_ok=True)
        with open(caption_file, "w") as fh:
            fh.write(text)
    return report(path(key), caption=caption_file, category=category, labels={"name": title})


def run_was_partial(workflow):
    """Did the user ask for part of the DAG only (so some results are meant to stay out of date)?"""
    dag = workflow.dag_settings
    return bool(dag.until or dag.omit_from or dag.allowed_rules or dag.batch) or workflow.touch


wildcard_constraints:
    split="train|evaluate",
    **RUNS.wildcard_constraints(),
