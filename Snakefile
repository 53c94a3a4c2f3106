# Heated-up softmax + spectrum correction for mismatched-device acoustic scene classification.
# Thin entry point: configuration, validation, the rule files, the default target and the currency check.
#   snakemake --cores all --configfile params.yaml config/smoke.yaml     # the demo
#   snakemake -n                                                          # plan the paper grid
#   snakemake --profile slurm                                             # the same DAG on SLURM

from snakemake.logging import logger
from snakemake.utils import min_version

from heatedasc import pinning
from heatedasc.config import hidden_edits, validate_config
from heatedasc.currency import Currency
from heatedasc.ownership import check_data_root
from heatedasc.fileio import clean_scratch
from heatedasc.sessions import check_cluster_reachable, clear_stale_locks, end_with_dvc, record_holder, release_holder

min_version("9.15")


configfile: os.path.join(workflow.basedir, "params.yaml")


# One software environment for every rule: the pinned requirements.lock, as an Apptainer image built from
# containers/heatedasc.def (README, "On a SLURM cluster"). Used with `--sdm apptainer`; ignored otherwise.
container: "heatedasc.sif"


validate_config(config)  # the project's one loader: schema + cross-key checks (heatedasc.config)
for problem in hidden_edits([os.path.join(workflow.basedir, "params.yaml"), *workflow.overwrite_configfiles]):
    logger.warning(f"warning: {problem}")  # DVC's config stage refuses these; a plain run only warns
# CPU kernels and threads (heatedasc.pinning): set before any job starts, so each job's numpy and torch load with
# them (jobs, local or SLURM, inherit this environment); each job checks them (heatedasc.job.run_job)
os.environ.update(pinning.environment(config["cpu"]))
# before any job (and in `snakemake -n`): never plan to overwrite a dataset the generator did not write, and never
# plan from a data root that is not there
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


# Snakemake decides what reruns, by its own rules; heatedasc.currency makes the file dates it reads true to
# content first (after `dvc pull`, `dvc checkout` or `git checkout` they are not), and gives each out-of-date
# job an input that names why. Every rule that writes files must record them: one that forgets stops here.
CURRENCY = Currency(workflow, config)
CURRENCY.install()
if workflow.is_main_process:
    end_with_dvc()  # inside a DVC stage: end when dvc ends
    clear_stale_locks()  # left by a run that was killed: no `snakemake --unlock` needed
    clean_scratch()  # temporary files of writers that are gone (heatedasc.fileio)


onstart:
    check_cluster_reachable(workflow)  # before Snakemake removes any output to rerun it
    record_holder()


onerror:
    release_holder()


onsuccess:
    release_holder()
    # Every job of this run is current by content now, or the run fails naming the ones that are not (so
    # `dvc repro` never locks a state whose records disagree with the files). After --touch, the records of the
    # touched jobs are made to describe what is there (marked as touched), as the option promises.
    if workflow.touch:
        CURRENCY.mark_current()
    stale = [] if run_was_partial(workflow) else CURRENCY.verify()
    if stale:
        raise WorkflowError("these results are not current after the run:\n" + "\n".join(
            f"  {d.job}: {'; '.join(d.reasons) or d.state}" for d in stale))
