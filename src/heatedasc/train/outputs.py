"""A run's files (docs/reproduction.md §7): the selected epoch's model evaluated on the test set, and metrics.json,
history.csv, model.pt, embeddings.npz and predictions.npz written to the run folder, each atomically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from heatedasc.fileio import atomic_path, save_torch, write_json, write_text
from heatedasc.losses import heated_softmax
from heatedasc.metrics import device_accuracies, expected_calibration_error
from heatedasc.tau import DEVICES
from heatedasc.train.checkpoint import TrainState
from heatedasc.train.loop import BatchRunner, DeviceData
from heatedasc.train.recipe import RunSpec

HISTORY_COLUMNS = (
    "epoch", "train_loss", "lr", "val_acc_a", "val_acc_b", "val_acc_c", "val_avg_bc", "val_overall",
)
# Seconds per epoch: beside history.csv, but not a result (.dvcignore'd): an identical rerun takes other times.
EPOCH_SECONDS = "epoch_seconds.csv"


def selection_note(selection: str, monitor: str, holdout_fraction: float) -> str:
    if selection == "test":
        return (
            f"The epoch was chosen by the test set (fold1_evaluate {monitor} accuracy), which also drove the "
            "learning-rate schedule, as in the paper; this leaks the test set into model selection, so the "
            "reported accuracies are optimistic."
        )
    if selection == "holdout":
        return (
            f"The epoch was chosen by {monitor} accuracy on a validation split of {holdout_fraction:g} of the "
            "fold1_train recording locations, which the spectrum correction and the standardisation also left out; "
            "the test set (fold1_evaluate) was not used for selection or the learning-rate schedule."
        )
    return (
        "The last epoch was kept (no epoch selection), but the learning-rate schedule was driven by the test set "
        f"(fold1_evaluate {monitor} accuracy), as in the paper; this leaks the test set into training, so the "
        "reported accuracies may be optimistic (use selection 'holdout' for an untouched test set)."
    )


def run_metrics(spec: RunSpec, state: TrainState, test_pred: np.ndarray, probs: np.ndarray, data: DeviceData) -> dict:
    """metrics.json: test accuracies per device and class, confusion matrices, ECE, the selected epoch."""
    n_classes, cfg, best = spec.n_classes, spec.cfg, state.best
    test_labels, test_devices = data.test_labels, data.test_devices
    accs = device_accuracies(test_pred, test_labels, test_devices)
    confusion = {}
    for d in DEVICES:
        sel = test_devices == d
        mat = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(mat, (test_labels[sel], test_pred[sel]), 1)
        confusion[d] = mat.tolist()
    class_acc = {}
    for k, scene in enumerate(spec.scenes):
        sel = test_labels == k
        class_acc[scene] = float((test_pred[sel] == k).mean()) if sel.any() else None  # None: no test rows
    metrics = {
        "correction": spec.correction, "temperature": spec.temperature, "loss": spec.loss, "seed": spec.seed,
        "acc_a": accs["acc_a"], "acc_b": accs["acc_b"], "acc_c": accs["acc_c"], "avg_bc": accs["avg_bc"],
        "acc_overall": accs["overall"],
        "n_test": {d: int((test_devices == d).sum()) for d in DEVICES},
        "class_acc": class_acc, "confusion": confusion,
        "ece": expected_calibration_error(probs.astype(np.float64), test_labels),
        "params_trainable": spec.param_counts[0], "params_keras": spec.param_counts[1],
        "best_epoch": int(best["epoch"]), "epochs_run": len(state.history), "selection": cfg["selection"],
        "selection_note": selection_note(cfg["selection"], cfg["monitor"], float(cfg["holdout_fraction"])),
        "monitor": cfg["monitor"], "best_monitor_value": float(best["value"]),
    }
    if spec.val_rows is not None:  # holdout: the locations training validated on (the fits left the same ones out)
        metrics["validation_locations"] = sorted(set(spec.train.index["identifier"].iloc[spec.val_rows].astype(str)))
        metrics["n_validation"] = int(len(spec.val_rows))
    return metrics


def write_outputs(spec: RunSpec, state: TrainState, runner: BatchRunner, data: DeviceData) -> dict:
    """Evaluate the selected epoch's model (state.best) and write the run's files; return the metrics."""
    state.model.load_state_dict(state.best["state"])
    eval_bs = int(spec.cfg["eval_batch_size"])
    test_logits, test_emb = runner.infer(data.x_test, None, eval_bs)
    _, train_emb = runner.infer(data.x_train, None, eval_bs)
    test_pred = test_logits.argmax(axis=1)  # accuracy from z: T does not move the argmax
    probs = heated_softmax(torch.from_numpy(test_logits), spec.temperature).numpy().astype(np.float32)
    metrics = run_metrics(spec, state, test_pred, probs, data)
    out_dir, best = spec.out_dir, state.best
    out_dir.mkdir(parents=True, exist_ok=True)
    hist_df = pd.DataFrame(state.history)
    write_text(out_dir / "history.csv", hist_df[list(HISTORY_COLUMNS)].to_csv(index=False))
    write_text(out_dir / EPOCH_SECONDS, hist_df[["epoch", "seconds"]].to_csv(index=False))
    save_torch({"state_dict": best["state"],
                "meta": {"model_cfg": dict(spec.model_cfg), "n_classes": spec.n_classes,
                         "temperature": spec.temperature, "loss": spec.loss, "seed": spec.seed,
                         "best_epoch": int(best["epoch"]), "selection": spec.cfg["selection"],
                         "monitor": spec.cfg["monitor"], "scenes": list(spec.scenes)}}, out_dir / "model.pt")
    with atomic_path(out_dir / "embeddings.npz") as tmp:
        np.savez(tmp, train_embeddings=train_emb.astype(np.float32), train_labels=spec.train_labels,
                 train_devices=spec.train_devices.astype(str), test_embeddings=test_emb.astype(np.float32),
                 test_labels=data.test_labels, test_devices=data.test_devices.astype(str))
    with atomic_path(out_dir / "predictions.npz") as tmp:
        np.savez(tmp, filenames=spec.test.index["filename"].to_numpy(dtype=str), labels=data.test_labels,
                 devices=data.test_devices.astype(str), logits=test_logits.astype(np.float32), probs=probs)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
