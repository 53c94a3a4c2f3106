"""Checkpoint and resume: after every epoch the whole training state (model, optimiser, schedule, gradient scaler,
the run's generators, the epochs so far) goes to one file; a rerun of the same run resumes from it and continues
bit-identically. A checkpoint is resumed only by the run it was made for: the same caches, config and code."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from heatedasc.codedeps import module_closure_digest
from heatedasc.fileio import save_torch
from heatedasc.model import ASCNet

log = logging.getLogger("heatedasc.train")  # one logger for the package: job logs name it

RESUME_DIR = "resume"  # heatedasc.fileio.resumable_dir(out_dir, RESUME_DIR) holds the last epoch's checkpoint
CHECKPOINT = "last.pt"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint() -> str:
    """The import closure of the training package, by content (the same notion of "the code" the workflow
    records), so a checkpoint made by other code is never resumed."""
    return module_closure_digest("train")


def run_hash(run_config: dict) -> str:
    """What a checkpoint is keyed on: `run_config` (caches by content, the run's settings, its runtime) and the
    code that trains it."""
    return config_hash({**run_config, "code": code_fingerprint()})


def _new_best() -> dict:
    return {"epoch": 0, "value": -math.inf, "state": None}


@dataclass(eq=False)
class TrainState:
    """Everything a run carries from one epoch to the next: what a checkpoint holds."""

    model: ASCNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    torch_gen: torch.Generator            # the epochs' shuffles
    np_rng: np.random.Generator           # the mixup draws
    epoch: int = 0                        # epochs done
    history: list[dict] = field(default_factory=list)  # one row per epoch done (outputs.HISTORY_COLUMNS, seconds)
    best: dict = field(default_factory=_new_best)      # the selected epoch: epoch, monitored value, model state


def rng_snapshot(torch_gen: torch.Generator, np_rng: np.random.Generator) -> dict:
    snap = {"torch_gen": torch_gen.get_state(), "np_rng": np_rng.bit_generator.state,
            "torch_global": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def rng_restore(snap: dict, torch_gen: torch.Generator, np_rng: np.random.Generator) -> None:
    torch_gen.set_state(snap["torch_gen"])
    np_rng.bit_generator.state = snap["np_rng"]
    torch.set_rng_state(snap["torch_global"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def save_checkpoint(state: TrainState, path: Path, key: str) -> None:
    """The state after state.epoch epochs, keyed `key` (run_hash); through a buffer: a full disk is an OSError
    naming the file."""
    ckpt = {"config_hash": key, "epoch": state.epoch, "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(), "rng": rng_snapshot(state.torch_gen, state.np_rng),
            "history": state.history, "best": state.best}
    save_torch(ckpt, path)


def resume(state: TrainState, path: Path, key: str, out_dir: Path) -> None:
    """Load the checkpoint at `path` into `state` when there is one made for this run (key `key`); a checkpoint
    of another run is ignored (the run starts over and overwrites it)."""
    if not path.is_file():
        return
    # CPU first: generator states must stay CPU tensors; load_state_dict moves the rest. The checkpoint holds only
    # tensors and plain Python values (save_checkpoint), so torch's weights-only loader reads it: no pickled code runs.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("config_hash") != key:
        log.info("ignoring %s: it belongs to a different run configuration; starting over", path)
        return
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    rng_restore(ckpt["rng"], state.torch_gen, state.np_rng)
    state.epoch, state.history, state.best = ckpt["epoch"], ckpt["history"], ckpt["best"]
    log.info("resuming %s after epoch %d", out_dir, state.epoch)
