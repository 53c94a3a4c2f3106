"""Evaluation metrics of a run (docs/reproduction.md §7): accuracy per recording device and the expected calibration
error, one copy for the training loop (metrics.json) and the report (calibration tables, reliability
diagrams)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from heatedasc.tau import DEVICES

ECE_BINS = 15  # fixed by the output contract (metrics.json `ece`)


def device_accuracies(pred: np.ndarray, labels: np.ndarray, devices: np.ndarray) -> dict[str, float]:
    """Accuracy per device a/b/c (NaN if a device has no rows), avg_bc and overall."""
    correct = pred == labels
    out = {}
    for d in DEVICES:
        sel = devices == d
        out[f"acc_{d}"] = float(correct[sel].mean()) if sel.any() else float("nan")
    out["avg_bc"] = (out["acc_b"] + out["acc_c"]) / 2
    out["overall"] = float(correct.mean()) if len(correct) else float("nan")
    return out


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin (lo, hi]: count, accuracy and mean confidence of the top class."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        n = int(sel.sum())
        rows.append({"lo": lo, "hi": hi, "count": n, "accuracy": float(correct[sel].mean()) if n else np.nan,
                     "confidence": float(conf[sel].mean()) if n else np.nan})
    return pd.DataFrame(rows)


def ece_from_bins(bins: pd.DataFrame) -> float:
    """Σ_b |B|/N · |acc(B) − conf(B)| over the non-empty bins of ``reliability_bins``; NaN if all are empty.

    Summed bin by bin in order (not with a pairwise sum), so metrics.json `ece` keeps its last digit.
    """
    total = int(bins["count"].sum())
    if total == 0:
        return float("nan")
    ece = 0.0
    for count, accuracy, confidence in zip(bins["count"], bins["accuracy"], bins["confidence"]):
        if count:
            ece += count / total * abs(accuracy - confidence)
    return float(ece)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins of the top-class probability (metrics.json `ece`)."""
    return ece_from_bins(reliability_bins(probs, labels, n_bins))
