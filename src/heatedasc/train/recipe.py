"""The recipe of one training run, read and checked once before any training: its settings (the train and
execution.train sections, checked against the config schema, the only list of their keys and values), its caches,
its rows, its device and runtime, and the hash a checkpoint of it is keyed on (RunSpec)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from heatedasc.config import check_section, schema_node
from heatedasc.feature_cache import FeatureCache
from heatedasc.hashing import digest
from heatedasc.losses import make_loss
from heatedasc.model import ASCNet, block_output_shapes, count_parameters
from heatedasc.runkey import parse_run_dir
from heatedasc.runtime import Runtime, resolve_device, resolve_runtime
from heatedasc.tau import SCENES
from heatedasc.train.checkpoint import run_hash
from heatedasc.train.inputs import check_run_caches, load_run_caches, split_rows

# The keys and values of the two sections, as the schema (workflow/schemas/config.schema.yaml) has them.
TRAIN_KEYS = tuple(schema_node("train")["required"])
# Speed-only settings (params.yaml `execution.train`): how fast a run computes, never what it is (not recorded,
# never a reason to rerun; docs/reproduction.md lists them).
EXECUTION_KEYS = tuple(schema_node("execution.train")["required"])
SELECTIONS = tuple(schema_node("train.selection")["enum"])
MONITORS = tuple(schema_node("train.monitor")["enum"])
COMPILE_MODES = tuple(schema_node("execution.train.compile_mode")["enum"])


def read_train_config(train_cfg: Mapping, execution_cfg: Mapping) -> dict:
    """The train section's keys and execution.train's in one dict, each checked against the schema: a missing key
    or a wrong value is a ValueError naming the key (`train.selection must be one of ...`)."""
    cfg = check_section(train_cfg, "train", what="the training config")
    cfg.update(check_section(execution_cfg, "execution.train", what="the training config"))
    return cfg


def correction_of_run_dir(out_dir: Path) -> str:
    """The correction of a run folder, read by its own key (heatedasc.runkey), never guessed from its depth
    ('' if `out_dir` is not a run folder): metrics.json's label when the caller names none."""
    run_key = parse_run_dir(out_dir)
    return run_key["correction"] if run_key is not None else ""


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run, validated and resolved once by plan_run: what the loop trains and the outputs write."""

    train: FeatureCache
    test: FeatureCache
    fit_rows: np.ndarray            # training-cache rows that are trained on
    val_rows: np.ndarray | None     # training-cache rows that validate (holdout); None: the test cache validates
    train_labels: np.ndarray        # label of every training-cache row
    train_devices: np.ndarray       # device letter of every training-cache row
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: str
    temperature: float
    seed: int
    correction: str
    scenes: tuple[str, ...]
    model_cfg: dict
    cfg: dict                       # read_train_config: the train section and execution.train
    param_counts: tuple[int, int]   # (trainable, keras)
    device: torch.device
    runtime: Runtime
    out_dir: Path
    run_hash: str                   # checkpoints of another hash are not resumed

    @property
    def n_classes(self) -> int:
        return len(self.scenes)


def _loss_fn(loss: str, temperature: float, loss_cfg: Mapping) -> Callable:
    """The run's loss at temperature T, its settings (the loss section) checked against the schema."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cfg = check_section(loss_cfg, "loss", what="the loss config")
    return make_loss(loss, temperature=temperature, gamma=float(cfg["gamma"]), focal_form=cfg["focal_form"])


def _probe_model(model_cfg: dict, n_classes: int, train: FeatureCache) -> ASCNet:
    """A model of the configured shape (never trained: its parameters are counted), checked to take the clips."""
    try:
        probe = ASCNet(n_classes=n_classes, **model_cfg)
    except TypeError as exc:
        raise ValueError(f"model: unexpected key in model config ({exc})") from exc
    too_small = f"{train.npy_path}: clips of {train.clip_shape} are too small for the model's conv blocks"
    try:
        block_output_shapes(probe, (1,) + train.clip_shape)
    except RuntimeError as exc:  # a kernel larger than its input, or an empty output
        raise ValueError(too_small) from exc
    return probe


def plan_run(
    *, train_npy: str | os.PathLike, train_index: str | os.PathLike, eval_npy: str | os.PathLike,
    eval_index: str | os.PathLike, out_dir: Path, temperature: float, loss: str, seed: int, model_cfg: dict,
    loss_cfg: dict, train_cfg: Mapping, execution_cfg: Mapping, correction: str | None,
) -> RunSpec:
    """Check everything a run needs before any training (settings, device, caches, model shape) and resolve it
    into a RunSpec. Nothing is written; a problem is a ValueError naming the key or the file."""
    loss_fn = _loss_fn(loss, temperature, loss_cfg)
    cfg = read_train_config(train_cfg, execution_cfg)
    # A job that was given a GPU its torch cannot use stops here, before any data is read.
    device = resolve_device(cfg["device"], "execution.train.device")
    runtime = resolve_runtime(cfg, device)
    scenes = tuple(SCENES)
    train, test = load_run_caches(train_npy, train_index, eval_npy, eval_index, n_classes=len(scenes))
    model_probe = _probe_model(model_cfg, len(scenes), train)
    if correction is None:
        correction = correction_of_run_dir(out_dir)
    check_run_caches(train, test, correction=correction, cfg=cfg)
    fit_rows, val_rows = split_rows(train, cfg)
    key = run_hash({
        # the caches by content: a checkpoint is resumed only on the very features it was trained on
        "train_npy": digest(train.npy_path), "train_index": digest(train.index_path),
        "eval_npy": digest(test.npy_path), "eval_index": digest(test.index_path),
        "temperature": temperature, "loss": loss, "seed": int(seed), "model": model_cfg, "loss_cfg": loss_cfg,
        "train": cfg, "n_classes": len(scenes),
        "runtime": runtime.describe(),  # a checkpoint made in other precision or compiled otherwise is not resumed
    })
    return RunSpec(
        train=train, test=test, fit_rows=fit_rows, val_rows=val_rows,
        train_labels=train.index["label"].to_numpy(dtype=np.int64),
        train_devices=train.index["device"].to_numpy(dtype=str), loss_fn=loss_fn, loss=loss,
        temperature=temperature, seed=int(seed), correction=correction, scenes=scenes, model_cfg=model_cfg, cfg=cfg,
        param_counts=count_parameters(model_probe), device=device, runtime=runtime, out_dir=out_dir, run_hash=key,
    )
