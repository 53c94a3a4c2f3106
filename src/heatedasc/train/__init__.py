"""Training (docs/reproduction.md §6) and per-run outputs (docs/reproduction.md §7): Adadelta, Keras-style L2,
mixup, plateau LR, epoch selection (test | holdout | last), resumable checkpoints, metrics/embeddings/predictions.

One module a job:

    recipe      the run's settings (checked against the config schema), caches, rows and device: RunSpec
    inputs      the feature caches a run reads, checked to be its own (provenance, holdout)
    maths       the paper's maths: Adadelta, the plateau schedule, the L2 term, mixup
    loop        batched passes on the device, one epoch, the epochs of a run
    checkpoint  checkpoint and resume (the training state, the generators)
    outputs     metrics.json, history.csv, model.pt, embeddings.npz, predictions.npz
    run         run_training: the above, in order

Device and compile policy (Runtime, resolve_runtime, torch.compile) is heatedasc.runtime's. The names below are
re-exported for the workflow script, the benchmarks and the tests.
"""

from heatedasc.metrics import expected_calibration_error
from heatedasc.runtime import AMP_DTYPES, COMPILE_DEVICES, Runtime, resolve_runtime
from heatedasc.train.checkpoint import RESUME_DIR, code_fingerprint
from heatedasc.train.inputs import check_cache_origin, run_holdout
from heatedasc.train.loop import BatchRunner, train_epoch
from heatedasc.train.maths import (
    draw_epoch_mixup,
    draw_mixup,
    l2_penalty,
    make_optimizer,
    make_plateau_scheduler,
    mixup_batch,
)
from heatedasc.train.outputs import EPOCH_SECONDS, HISTORY_COLUMNS
from heatedasc.train.recipe import COMPILE_MODES, EXECUTION_KEYS, MONITORS, SELECTIONS, TRAIN_KEYS, RunSpec
from heatedasc.train.run import run_training

__all__ = [
    "AMP_DTYPES", "COMPILE_DEVICES", "COMPILE_MODES", "EPOCH_SECONDS", "EXECUTION_KEYS", "HISTORY_COLUMNS", "MONITORS",
    "RESUME_DIR", "SELECTIONS", "TRAIN_KEYS", "BatchRunner", "RunSpec", "Runtime", "check_cache_origin",
    "code_fingerprint", "draw_epoch_mixup", "draw_mixup", "expected_calibration_error", "l2_penalty",
    "make_optimizer", "make_plateau_scheduler", "mixup_batch", "resolve_runtime", "run_holdout", "run_training",
    "train_epoch",
]
