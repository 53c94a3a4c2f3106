# Heated-up softmax + spectrum correction for mismatched-device acoustic scene classification.
# Thin entry point: configuration, validation, the rule files and the default target.
#   snakemake --cores all --configfile params.yaml config/smoke.yaml     # the demo
#   snakemake -n                                                          # plan the paper grid
#   snakemake --profile slurm                                             # the same DAG on SLURM

from snakemake.logging import logger
from snakemake.utils import min_version

from heatedasc import pinning
from heatedasc.config import hidden_edits, validate_config
from heatedasc.ownership import check_data_root

min_version("9.0")


configfile: os.path.join(workflow.basedir, "params.yaml")


validate_config(config)  # the project's one loader: schema + cross-key checks (heatedasc.config)
for problem in hidden_edits([os.path.join(workflow.basedir, "params.yaml"), *workflow.overwrite_configfiles]):
    logger.warning(f"warning: {problem}")  # DVC's config stage refuses these; a plain run only warns
# CPU kernels and threads (heatedasc.pinning): set before any job starts, so each job's numpy and torch load with
# them (jobs, local or SLURM, inherit this environment); each job checks them with pinning.apply
os.environ.update(pinning.environment(config["cpu"]))
# before any job (and in `snakemake -n`): never plan to overwrite a dataset the generator did not write
check_data_root(config["data"]["root"], synth_enabled=config["synth"]["enabled"])


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/coefficients.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),
    default_target: True


# Aggregate targets, one per coarse DVC stage (dvc.yaml calls them by name).
rule synthetic_data:
    input:
        [path("meta")] if config["synth"]["enabled"] else [],


rule features_all:
    input:
        expand(path("cache"), correction=SWEEP["correction"], split=SPLITS),
        expand(path("cache_index"), correction=SWEEP["correction"], split=SPLITS),
        path("coefficient_plot"),
        path("prepare_summary"),


rule train_all:
    input:
        all_run_files("metrics.json"),
