"""Synthetic inputs for the benchmarks and the GPU tests (benchmarks/gpu_check.py, tests/test_gpu.py): feature
caches of any shape whose classes a model can learn slowly, and coloured-noise clips spanning 60 dB."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heatedasc.tau import SCENES

SCENE_COUNT = len(SCENES)


def synthetic_batch(labels: np.ndarray, devices: np.ndarray, shape: tuple[int, int], *, signal: float,
                    seed: int, device: torch.device) -> torch.Tensor:
    """float32 [B, M, T] standardised-looking clips: unit noise + a class-specific 2-D stripe texture with a
    per-clip amplitude in [0, 2*signal] (some clips are easy, some hopeless: accuracy climbs with training)
    + a device-specific tilt over the mel bins. The texture is local, so the translation-invariant CNN sees it."""
    g = torch.Generator(device=device).manual_seed(int(seed))
    n = len(labels)
    m = torch.arange(shape[0], device=device, dtype=torch.float32)[:, None]
    t = torch.arange(shape[1], device=device, dtype=torch.float32)[None, :]
    f_mel = torch.tensor([0.05, 0.11, 0.17, 0.23, 0.29] * 2, device=device)  # cycles per bin, by class
    f_time = torch.tensor([0.03] * 5 + [0.13] * 5, device=device)             # cycles per frame, by class
    lab = torch.as_tensor(labels, device=device)
    amp = signal * 2 * torch.rand(n, generator=g, device=device)
    phase = 2 * math.pi * torch.rand(n, generator=g, device=device)
    stripes = torch.cos(2 * math.pi * (f_mel[lab, None, None] * m + f_time[lab, None, None] * t) + phase[:, None, None])
    tilt = torch.as_tensor(np.select([devices == "b", devices == "c"], [0.5, -0.5], 0.0), device=device,
                           dtype=torch.float32)[:, None, None] * (m / shape[0] - 0.5)
    noise = torch.randn((n, *shape), generator=g, device=device)
    return noise + amp[:, None, None] * stripes + tilt


def write_synthetic_cache(folder: Path, split: str, n: int, shape: tuple[int, int], *, signal: float, seed: int,
                          device: torch.device) -> tuple[Path, Path]:
    """A float16 cache (open_memmap, chunked) and its index CSV as load_feature_cache expects."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SCENE_COUNT, n)
    devices = np.array(list("aaabc"))[np.arange(n) % 5]
    npy, csv = folder / f"{split}.npy", folder / f"{split}.csv"
    cache = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float16, shape=(n, *shape))
    chunk = 256
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = synthetic_batch(labels[start:stop], devices[start:stop], shape, signal=signal, seed=seed * 100_003 + start,
                            device=device)
        cache[start:stop] = x.half().cpu().numpy()
    cache.flush()
    del cache
    pd.DataFrame({
        "row": np.arange(n), "filename": [f"audio/{split}-{i}-{d}.wav" for i, d in enumerate(devices)],
        "scene_label": [SCENES[k] for k in labels], "label": labels, "device": devices,
        "identifier": [f"loc-{i % 40}" for i in range(n)], "group": [f"g{i}" for i in range(n)],
    }).to_csv(csv, index=False)
    return npy, csv


def coloured_clips(n: int, seconds: float, sr: int, seed: int) -> np.ndarray:
    """Brown + white noise with a tone and DC, under a slow envelope spanning 60 dB (quiet bins matter)."""
    rng = np.random.default_rng(seed)
    s = int(seconds * sr)
    t = np.arange(s) / sr
    clips = []
    for i in range(n):
        white = rng.standard_normal(s)
        brown = np.cumsum(white) / np.sqrt(s)
        x = 0.02 * white + 0.2 * brown + 0.05 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.01
        envelope = 10 ** (-3 * (0.5 + 0.5 * np.sin(2 * np.pi * t / max(seconds, 1e-3) + i)))  # 0 to -60 dB
        clips.append(0.9 * x * envelope / np.abs(x).max())
    return np.stack(clips).astype(np.float32)
