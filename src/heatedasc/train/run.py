"""One training run from start to files: plan it (recipe), train it (loop, resuming a checkpoint), write it (outputs)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from heatedasc.fileio import resumable_dir
from heatedasc.runtime import torch_settings
from heatedasc.train.checkpoint import CHECKPOINT, RESUME_DIR, resume
from heatedasc.train.loop import BatchRunner, fit, new_train_state, to_device
from heatedasc.train.outputs import write_outputs
from heatedasc.train.recipe import RunSpec, plan_run

log = logging.getLogger("heatedasc.train")  # one logger for the package: job logs name it


def run_training(
    *,
    train_npy: str | os.PathLike,
    train_index: str | os.PathLike,
    eval_npy: str | os.PathLike,
    eval_index: str | os.PathLike,
    out_dir: str | os.PathLike,
    temperature: float,
    loss: str,
    seed: int,
    model_cfg: dict,
    loss_cfg: dict,
    train_cfg: dict,
    execution_cfg: dict,
    threads: int = 1,
    progress: bool = True,
    correction: str | None = None,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train one (correction, T, loss, seed) run and write its outputs to `out_dir`; return the metrics.

    `correction` only labels metrics.json (default: recipe.correction_of_run_dir). `stop_after_epoch` ends the
    run after that epoch's checkpoint, as a kill would (for tests); it then returns {"stopped_after_epoch": k}
    and writes no outputs.
    """
    spec = plan_run(
        train_npy=train_npy, train_index=train_index, eval_npy=eval_npy, eval_index=eval_index,
        out_dir=Path(out_dir), temperature=float(temperature), loss=loss, seed=seed, model_cfg=model_cfg,
        loss_cfg=loss_cfg, train_cfg=train_cfg, execution_cfg=execution_cfg, correction=correction,
    )
    log.info("train on %s: %s", spec.device, ", ".join(f"{k} {v}" for k, v in spec.runtime.describe().items()))
    with torch_settings(spec.runtime, spec.device, deterministic=spec.cfg["deterministic"], threads=threads):
        return _train_and_write(spec, progress=progress, stop_after_epoch=stop_after_epoch)


def _train_and_write(spec: RunSpec, *, progress: bool, stop_after_epoch: int | None) -> dict:
    state = new_train_state(spec)
    runner = BatchRunner(state.model, spec.device, spec.runtime.amp_dtype, spec.runtime.channels_last,
                         spec.runtime.compile_mode)
    data = to_device(spec, runner)  # the whole caches on the device, once
    resume_dir = resumable_dir(spec.out_dir, RESUME_DIR)  # outside the run folder DVC tracks (heatedasc.fileio)
    resume(state, resume_dir / CHECKPOINT, spec.run_hash, spec.out_dir)
    if not fit(spec, state, runner, data, resume_dir / CHECKPOINT, progress=progress,
               stop_after_epoch=stop_after_epoch):
        return {"stopped_after_epoch": state.epoch}
    metrics = write_outputs(spec, state, runner, data)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return metrics
