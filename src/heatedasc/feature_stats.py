"""Standardisation statistics (docs/reproduction.md §3): mean and std per mel bin over every frame of the training
split, accumulated in float64 batch by batch (never by loading the whole set), saved beside the cache."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from heatedasc.features import LogMelExtractor, check_devices, iter_log_mel
from heatedasc.fileio import atomic_path


class RunningMeanStd:
    """Per-bin mean/variance over frames, merged batch by batch in float64 (Chan et al.).

    Merging centred batch moments keeps precision when values sit on a large offset, where a plain
    sum of squares would cancel catastrophically.
    """

    def __init__(self, n_bins: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_bins, dtype=np.float64)
        self.m2 = np.zeros(n_bins, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """batch [B, n_bins, T]: every (clip, frame) is one observation per bin."""
        x = np.asarray(batch, dtype=np.float64).transpose(1, 0, 2).reshape(batch.shape[1], -1)
        n = x.shape[1]
        if n == 0:
            return
        mean_b = x.mean(axis=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count)


def compute_feature_stats(
    manifest: pd.DataFrame,
    audio_dir: str | os.PathLike,
    extractor: LogMelExtractor,
    *,
    batch_size: int,
    progress: bool = True,  # pragma: no mutate  (progress-bar display)
) -> dict:
    """Mean and std per mel bin over all frames of all ``split == "train"`` files (streaming, float64)."""
    rows = manifest[manifest["split"] == "train"].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError("manifest has no rows with split 'train' to compute feature statistics from")
    check_devices(extractor, rows, "train")
    running = RunningMeanStd(extractor.n_mels)
    # pragma: no mutate start  (progress-bar display arguments)
    batches = iter_log_mel(rows, audio_dir, extractor, batch_size=batch_size, progress=progress, desc="stats")
    # pragma: no mutate end
    for _, feats in batches:
        running.update(feats)
    std = running.std
    if np.any(~(std > 0)):
        bad = np.flatnonzero(~(std > 0)).tolist()
        raise ValueError(f"mel bins {bad[:10]} have zero variance over the training split; cannot standardise")
    return {"mean": running.mean, "std": std, "n_frames": int(running.count), "n_files": int(len(rows))}


def save_stats(path: str | os.PathLike, stats: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            mean=np.asarray(stats["mean"], dtype=np.float64),
            std=np.asarray(stats["std"], dtype=np.float64),
            n_frames=np.int64(stats["n_frames"]),
            n_files=np.int64(stats["n_files"]),
        )


def load_stats(path: str | os.PathLike) -> dict:
    with np.load(path, allow_pickle=False) as z:
        missing = {"mean", "std", "n_frames", "n_files"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        return {
            "mean": z["mean"].astype(np.float64),
            "std": z["std"].astype(np.float64),
            "n_frames": int(z["n_frames"]),
            "n_files": int(z["n_files"]),
        }
