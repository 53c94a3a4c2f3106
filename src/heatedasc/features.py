"""Log-mel features (SPEC §3) with the spectrum correction folded into per-device mel filterbanks.

Pipeline per clip: remove DC → |STFT| (periodic Hann, centre, reflect pad) → per-device filterbank
diag(c_d)·M (Slaney mel, Slaney norm) → log(mel + offset) → standardise per mel bin with float64
training statistics → float16 cache of shape (N, n_mels, n_frames).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from heatedasc.fileio import atomic_path

INDEX_COLUMNS = ("row", "filename", "scene_label", "label", "device", "identifier", "group")


# ------------------------------------------------------------------------------------------ threads
# CPU work is done one clip at a time, in blocks of FRAME_BLOCK frames, with clips spread over a pool
# of torch.get_num_threads() Python threads that each run torch single-threaded (torch releases the GIL).
# Measured on a 2-core box (benchmarks/bench_features.py): torch's CPU rfft is ~8x faster on 128-frame
# blocks than on one 1,724-frame call (the frames stay in cache), and whole clips per thread need no
# OpenMP barrier per op, which keeps throughput up when the cores are shared with other jobs.
# A clip's numbers depend only on the clip (never on the batch, the pool size or the chunking).
FRAME_BLOCK = 128


@contextlib.contextmanager
def _clip_pool() -> Iterator:
    """Yield ``run(fn, items) -> list`` that maps ``fn`` over ``items`` with single-threaded torch."""
    n_threads = max(1, torch.get_num_threads())
    if n_threads == 1:
        yield lambda fn, items: [fn(i) for i in items]
        return

    def worker_init() -> None:
        torch.set_num_threads(1)  # this thread's OpenMP/MKL setting (torch also stores it as the default)

    try:
        with ThreadPoolExecutor(n_threads, initializer=worker_init, thread_name_prefix="heatedasc-clip") as pool:
            yield lambda fn, items: list(pool.map(fn, items))
    finally:
        torch.set_num_threads(n_threads)  # restore the process-wide default the workers overwrote


# --------------------------------------------------------------------------------------------- STFT
def stft_magnitude(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """Magnitude STFT of a batch of waveforms [B, S] -> [B, n_fft//2 + 1, T].

    Same numbers as ``torch.stft(center=True, pad_mode="reflect", window=hann(periodic)).abs()`` (to
    float32 rounding), computed per clip with ``unfold`` + ``torch.fft.rfft`` on blocks of frames and
    a real sqrt(re² + im²), because that is much faster on CPU.
    """
    if waves.ndim != 2:
        raise ValueError(f"stft_magnitude expects waves of shape [B, S], got {tuple(waves.shape)}")
    if waves.device.type != "cpu":
        return _frame_magnitude(waves, n_fft=n_fft, hop_length=hop_length, remove_dc=remove_dc).transpose(1, 2)
    frames = _check_length(waves.shape[1], n_fft, hop_length)
    out = waves.new_empty(waves.shape[0], frames, n_fft // 2 + 1)
    window = torch.hann_window(n_fft, periodic=True, dtype=waves.dtype)

    def one(i: int) -> None:
        with torch.inference_mode():  # thread-local: the pool threads need their own
            for s, blk in _magnitude_blocks(waves[i], window, hop_length, remove_dc):
                out[i, s : s + len(blk)] = blk

    with _clip_pool() as run:
        run(one, range(waves.shape[0]))
    return out.transpose(1, 2)


def _check_length(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Number of frames of a centred STFT; ValueError if the clip is too short for reflect padding."""
    if n_samples <= n_fft // 2:
        raise ValueError(f"waveform of {n_samples} samples is too short for reflect padding of {n_fft // 2}")
    return n_samples // hop_length + 1


def _magnitude_blocks(
    wave: torch.Tensor, window: torch.Tensor, hop_length: int, remove_dc: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first frame, |STFT| [b, F]) for blocks of FRAME_BLOCK frames of one waveform [S]."""
    n_fft = window.shape[0]
    if remove_dc:
        wave = wave - wave.mean()
    padded = torch.nn.functional.pad(wave[None, None], (n_fft // 2, n_fft // 2), mode="reflect")[0, 0]
    frames = padded.unfold(0, n_fft, hop_length)  # [T, n_fft], a view
    for s in range(0, frames.shape[0], FRAME_BLOCK):
        spectrum = torch.view_as_real(torch.fft.rfft(frames[s : s + FRAME_BLOCK] * window, n=n_fft, dim=-1))
        real, imag = spectrum[..., 0], spectrum[..., 1]
        yield s, torch.addcmul(real * real, imag, imag).sqrt_()  # ~3x faster than complex abs() on CPU


def _frame_magnitude(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """Batched |STFT| laid out [B, T, F] (accelerator path: one big call is what a GPU wants)."""
    if waves.ndim != 2:
        raise ValueError(f"stft_magnitude expects waves of shape [B, S], got {tuple(waves.shape)}")
    if remove_dc:
        waves = waves - waves.mean(dim=1, keepdim=True)
    _check_length(waves.shape[1], n_fft, hop_length)
    pad = n_fft // 2
    padded = torch.nn.functional.pad(waves.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    frames = padded.unfold(-1, n_fft, hop_length)  # [B, T, n_fft], a view
    window = torch.hann_window(n_fft, periodic=True, dtype=waves.dtype, device=waves.device)
    spectrum = torch.view_as_real(torch.fft.rfft(frames * window, n=n_fft, dim=-1))  # [B, T, F, 2]
    real, imag = spectrum[..., 0], spectrum[..., 1]
    return torch.addcmul(real * real, imag, imag).sqrt_()


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank [n_fft//2 + 1, n_mels].

    The formula of ``librosa.filters.mel`` (defaults: htk=False, norm="slaney"), evaluated in float64
    so the float32 result equals librosa's to rounding (torchaudio's float32 ``melscale_fbanks`` with
    norm="slaney", mel_scale="slaney" is the same filterbank but off by up to ~1e-3 relative in a few
    weights, which showed as 1.3e-3 in log-mel).
    """
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0.0, float(sample_rate) / 2, n_freqs)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(float(f_min)), _hz_to_mel(float(f_max)), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, F]
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]  # Slaney area normalisation
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if len(empty):
        raise ValueError(f"mel bands {empty[:10].tolist()} are empty (n_mels {n_mels} too high for n_fft {n_fft})")
    return torch.from_numpy(np.ascontiguousarray(weights.T)).to(dtype)


_F_SP = 200.0 / 3  # Slaney mel scale: linear below 1 kHz (librosa.hz_to_mel, htk=False)
_MIN_LOG_HZ, _LOGSTEP = 1000.0, np.log(6.4) / 27.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP


def _hz_to_mel(f: float) -> float:
    return f / _F_SP if f < _MIN_LOG_HZ else _MIN_LOG_MEL + np.log(f / _MIN_LOG_HZ) / _LOGSTEP


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def _band_groups(nonzero: np.ndarray, call_cost: int = 2000) -> list[tuple[int, int, int, int]]:
    """Split the mel bands into runs (m0, m1, f0, f1) so that Σ (m1-m0)·(f1-f0) + call_cost·runs is least.

    ``nonzero`` [F, n_mels] bool. A Slaney filterbank is banded (2k of 262k weights are non-zero at
    the paper size): ~10 dense products over each run's frequency span cost ~12x less than one dense
    product and need no sparse kernel.
    """
    cols = nonzero.any(axis=0)
    n = nonzero.shape[1]
    lo = np.where(cols, nonzero.argmax(axis=0), nonzero.shape[0])
    hi = np.where(cols, nonzero.shape[0] - nonzero[::-1].argmax(axis=0), 0)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=int)
    for e in range(1, n + 1):
        for s in range(e):
            width = max(0, int(hi[s:e].max()) - int(lo[s:e].min()))
            cost = best[s] + width * (e - s) + call_cost
            if cost < best[e]:
                best[e], cut[e] = cost, s
    runs, e = [], n
    while e > 0:
        s = int(cut[e])
        f0, f1 = int(lo[s:e].min()), int(hi[s:e].max())
        runs.append((s, e, min(f0, f1), f1))
        e = s
    return runs[::-1]


# ---------------------------------------------------------------------------------------- extractor
class LogMelExtractor(torch.nn.Module):
    """Batched log-mel extractor; device d's correction c_d is folded into its own filterbank."""

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        f_min: float,
        f_max: float,
        log_offset: float,
        remove_dc: bool,
        coefficients: dict[str, np.ndarray] | None = None,
        devices: Sequence[str] = ("a", "b", "c"),
        cpu_chunk_clips: int = 2,
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min, self.f_max = float(f_min), float(f_max)
        self.log_offset = float(log_offset)
        self.remove_dc = bool(remove_dc)
        n_freqs = self.n_fft // 2 + 1
        mel = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, dtype=torch.float64)
        # Only devices with a coefficient vector get a filterbank: a missing one is an error, never 1.
        self.devices: tuple[str, ...] = tuple(
            d for d in devices if coefficients is None or d in coefficients
        )
        banks = []
        for d in self.devices:
            c = np.ones(n_freqs) if coefficients is None else np.asarray(coefficients[d], dtype=np.float64)
            if c.shape != (n_freqs,):
                raise ValueError(f"coefficients for device '{d}' have shape {c.shape}, expected ({n_freqs},)")
            if not np.all(np.isfinite(c)):
                raise ValueError(f"coefficients for device '{d}' contain non-finite values")
            banks.append(torch.from_numpy(c).unsqueeze(1) * mel)  # diag(c_d) · M
        stacked = torch.stack(banks).to(torch.float32) if banks else torch.zeros(0, n_freqs, n_mels)
        self.register_buffer("filterbanks", stacked)  # [D, F, n_mels]
        self.band_runs = _band_groups((mel != 0).numpy())  # the pattern c_d cannot widen
        # Accelerator path only: clips per batched call. The CPU path works one clip at a time.
        self.cpu_chunk_clips = int(cpu_chunk_clips)

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred STFT of ``n_samples`` samples (862 for 10 s at 44.1 kHz, hop 512)."""
        return _check_length(int(n_samples), self.n_fft, self.hop_length)

    def settings(self) -> dict:
        """Everything that determines the output besides the waveform (for cache keys)."""
        return {
            "sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
            "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max, "log_offset": self.log_offset,
            "remove_dc": self.remove_dc, "devices": list(self.devices),
        }

    def device_index_of(self, device: str) -> int:
        """Index of a device letter in the filterbank stack; ValueError naming it if unknown."""
        try:
            return self.devices.index(device)
        except ValueError:
            raise ValueError(
                f"unknown device '{device}': no correction coefficients for it "
                f"(extractor has devices {list(self.devices)})"
            ) from None

    def device_indices(self, devices: Sequence[str]) -> torch.Tensor:
        """LongTensor of filterbank indices for device letters (ValueError naming an unknown one)."""
        return torch.tensor([self.device_index_of(d) for d in devices], dtype=torch.long)

    def _check_index(self, n_waves: int, device_index: torch.Tensor) -> None:
        if n_waves != device_index.shape[0]:
            raise ValueError(f"{n_waves} waveforms but {device_index.shape[0]} device indices")
        if device_index.numel() and not (0 <= int(device_index.min()) and int(device_index.max()) < len(self.devices)):
            raise ValueError(f"device_index out of range for devices {list(self.devices)}")

    def forward(self, waves: torch.Tensor, device_index: torch.Tensor) -> torch.Tensor:
        """waves [B, S] float, device_index LongTensor [B] -> log-mel [B, n_mels, T]."""
        waves = waves.to(device=self.filterbanks.device, dtype=torch.float32)
        device_index = device_index.to(self.filterbanks.device)
        self._check_index(waves.shape[0], device_index)
        if waves.device.type != "cpu":
            return self._forward_batched(waves, device_index)
        if waves.ndim != 2:
            raise ValueError(f"expected waves of shape [B, S], got {tuple(waves.shape)}")
        out = waves.new_empty(waves.shape[0], self.n_mels, self.n_frames(waves.shape[1]))
        index = device_index.tolist()
        with _clip_pool() as run:
            run(lambda i: self.clip_log_mel(waves[i], index[i], out=out[i]), range(waves.shape[0]))
        return out

    def clip_log_mel(self, wave: torch.Tensor, device_index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel [n_mels, T] of one CPU waveform [S] with filterbank ``device_index`` (CPU path).

        Frames are processed in blocks of FRAME_BLOCK; the mel product is a few dense products over
        the filterbank's band runs. Runs with the caller's torch thread settings (the pool sets 1).
        """
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if out is None:
            out = wave.new_empty(self.n_mels, self.n_frames(wave.shape[0]))
        bank = self.filterbanks[int(device_index)]  # [F, n_mels]
        runs = [(m0, m1, bank[f0:f1, m0:m1]) for m0, m1, f0, f1 in self.band_runs]
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32)
        with torch.inference_mode():  # thread-local: the pool threads need their own
            for s, magnitude in _magnitude_blocks(wave, window, self.hop_length, self.remove_dc):
                mel = magnitude.new_empty(magnitude.shape[0], self.n_mels)  # [b, n_mels]
                for (m0, m1, weights), (_, _, f0, f1) in zip(runs, self.band_runs):
                    mel[:, m0:m1] = magnitude[:, f0:f1] @ weights
                out[:, s : s + mel.shape[0]] = mel.add_(self.log_offset).log_().T
        return out

    def _forward_batched(self, waves: torch.Tensor, device_index: torch.Tensor) -> torch.Tensor:
        """Accelerator path: one batched STFT and a dense product per device."""
        magnitude = _frame_magnitude(waves, n_fft=self.n_fft, hop_length=self.hop_length,
                                     remove_dc=self.remove_dc)  # [B, T, F]
        mel = magnitude.new_empty(magnitude.shape[0], magnitude.shape[1], self.n_mels)
        for d in torch.unique(device_index).tolist():
            rows = torch.nonzero(device_index == d).flatten()
            mel[rows] = magnitude[rows] @ self.filterbanks[d]
        return torch.log(mel + self.log_offset).transpose(1, 2).contiguous()


# ------------------------------------------------------------------------------------------- audio
def audio_path(audio_dir: str | os.PathLike, filename: str) -> Path:
    """Prepared audio of a manifest row: ``<audio_dir>/<basename of filename>``."""
    return Path(audio_dir) / Path(str(filename)).name


def read_wave(path: str | os.PathLike, expected_length: int | None = None) -> np.ndarray:
    """One mono float32 waveform; ValueError naming the file if unreadable, not mono or off-length."""
    import soundfile as sf

    try:
        x, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # soundfile raises several types; name the file either way
        raise ValueError(f"{path}: cannot read audio ({exc})") from exc
    if x.ndim != 1:
        raise ValueError(f"{path}: expected mono audio, got {x.shape[1]} channels")
    if expected_length is not None and len(x) != expected_length:
        raise ValueError(f"{path}: {len(x)} samples, but other files have {expected_length}")
    return x


def read_batch(paths: Sequence[Path], expected_length: int | None) -> tuple[np.ndarray, int]:
    """Read mono float32 waveforms of equal length; ValueError naming a file that differs."""
    waves = []
    for p in paths:
        x = read_wave(p, expected_length)
        expected_length = len(x) if expected_length is None else expected_length
        waves.append(x)
    return np.stack(waves), expected_length


def log_mel_files(
    paths: Sequence[str | os.PathLike],
    device_index: torch.Tensor | Sequence[int],
    extractor: LogMelExtractor,
    *,
    batch_size: int,
    load: Callable[[Path], np.ndarray],
    n_samples: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, log-mel [b, n_mels, T] float32) for files in order, ``batch_size`` at a time.

    On CPU each pool thread reads its clip with ``load`` and computes its features, so reading
    overlaps computing; on an accelerator files are read by the pool and the batch goes in one call.
    ``load(path)`` must return a float32 waveform of ``n_samples`` samples (or raise naming the file).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    index = [int(i) for i in torch.as_tensor(device_index).tolist()]
    n_frames = extractor.n_frames(n_samples)
    cpu = extractor.filterbanks.device.type == "cpu"
    with _clip_pool() as run:
        for start in range(0, len(paths), batch_size):
            stop = min(start + batch_size, len(paths))
            if cpu:
                feats = torch.empty(stop - start, extractor.n_mels, n_frames)

                def one(i: int) -> None:
                    wave = torch.from_numpy(load(paths[i]))
                    extractor.clip_log_mel(wave, index[i], out=feats[i - start])

                run(one, range(start, stop))
            else:
                waves = np.stack(run(load, paths[start:stop]))
                feats = extractor(torch.from_numpy(waves), torch.tensor(index[start:stop])).cpu()
            yield start, feats.numpy()


def iter_log_mel(
    rows: pd.DataFrame,
    audio_dir: str | os.PathLike,
    extractor: LogMelExtractor,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
    expected_length: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start row, log-mel batch [b, n_mels, T] float32 numpy) over ``rows`` in order.

    Every file must have the length of the first one (or ``expected_length``); a file that differs
    is a ValueError naming it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Check every device before reading any audio, so an unknown device fails at once.
    index = extractor.device_indices(list(rows["device"].astype(str)))
    paths = [audio_path(audio_dir, f) for f in rows["filename"].astype(str)]
    if not paths:
        return
    if expected_length is None:
        expected_length = len(read_wave(paths[0]))
    with torch.inference_mode(), tqdm(total=len(rows), desc=desc, unit="clip", disable=not progress) as bar:
        for start, feats in log_mel_files(
            paths, index, extractor, batch_size=batch_size, n_samples=expected_length,
            load=lambda p: read_wave(p, expected_length),
        ):
            yield start, feats
            bar.update(len(feats))


# ------------------------------------------------------------------------------------- statistics
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


def check_devices(extractor: LogMelExtractor, rows: pd.DataFrame, split: str) -> None:
    """ValueError naming the device, the split and a file when a row's device has no filterbank (never c = 1)."""
    devices = rows["device"].astype(str)
    unknown = sorted(set(devices) - set(extractor.devices))
    if unknown:
        d = unknown[0]
        files = rows.loc[devices == d, "filename"].astype(str)
        raise ValueError(
            f"unknown device '{d}' in split '{split}' ({len(files)} file(s), e.g. {files.iloc[0]}): no correction "
            f"coefficients for it (extractor has devices {list(extractor.devices)})"
        )


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The prepare stage's manifest CSV (location and segment stay strings: '007' is not 7)."""
    return pd.read_csv(path, dtype={"location": str, "segment": str})


def make_extractor(
    coefficients_path: str | os.PathLike, *, sample_rate: int, devices: Sequence[str], device: str = "cpu",
    **settings,
) -> LogMelExtractor:
    """One correction's extractor (its c_d folded into the filterbanks) on ``features.device``.

    On CUDA every batch is one batched STFT + mel product on the device; the numbers match the CPU
    path to float32 rounding, so caches do not depend on where they were made.
    """
    from heatedasc.correction import load_coefficients
    from heatedasc.runtime import resolve_device

    coefficients, _ = load_coefficients(coefficients_path)
    extractor = LogMelExtractor(sample_rate=sample_rate, coefficients=coefficients, devices=devices, **settings)
    return extractor.to(resolve_device(device, "features.device"))


def compute_feature_stats(
    manifest: pd.DataFrame,
    audio_dir: str | os.PathLike,
    extractor: LogMelExtractor,
    *,
    batch_size: int,
    progress: bool = True,
) -> dict:
    """Mean and std per mel bin over all frames of all ``split == "train"`` files (streaming, float64)."""
    rows = manifest[manifest["split"] == "train"].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError("manifest has no rows with split 'train' to compute feature statistics from")
    check_devices(extractor, rows, "train")
    running = RunningMeanStd(extractor.n_mels)
    for _, feats in iter_log_mel(rows, audio_dir, extractor, batch_size=batch_size, progress=progress, desc="stats"):
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


# ------------------------------------------------------------------------------------------ cache
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


SHARD_BATCHES = 8  # batches per resumable shard (a performance/resume knob; the result never depends on it)
_SHARD_NAME = re.compile(r"^rows-(\d+)-(\d+)\.([0-9a-f]{16})\.npy$")


def cache_key(rows: pd.DataFrame, extractor: LogMelExtractor, stats: dict, n_samples: int) -> str:
    """sha256 over everything that determines a split's cache: its manifest rows (in order), the
    standardisation stats, the extractor settings and filterbanks, and the clip length."""
    h = hashlib.sha256()
    h.update(b"heatedasc-features-v1\0")
    h.update(rows.to_csv(index=False).encode())
    for key in ("mean", "std"):
        h.update(np.ascontiguousarray(stats[key], dtype=np.float64).tobytes())
    h.update(json.dumps({**extractor.settings(), "n_samples": int(n_samples)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(extractor.filterbanks.detach().cpu().numpy(), dtype=np.float32).tobytes())
    return h.hexdigest()


def _shard_path(folder: Path, start: int, stop: int, digest: str) -> Path:
    return folder / f"rows-{start:08d}-{stop:08d}.{digest[:16]}.npy"


def _valid_shard(path: Path, start: int, stop: int, shape: tuple[int, int]) -> bool:
    """A shard counts only if its name's checksum matches its bytes and its header has the right shape."""
    m = _SHARD_NAME.match(path.name)
    if not m or (int(m[1]), int(m[2])) != (start, stop):
        return False
    try:
        if sha256_file(path)[:16] != m[3]:
            return False
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array.dtype == np.float16 and array.shape == (stop - start, *shape)
    except (OSError, ValueError):
        return False


def _write_shard(folder: Path, start: int, feats16: np.ndarray) -> Path:
    """Write one shard atomically: temp name, checksum, rename to ``rows-<start>-<stop>.<sha16>.npy``."""
    tmp = folder / f".tmp-rows-{start:08d}-{os.getpid()}.npy"
    try:
        np.save(tmp, feats16, allow_pickle=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        final = _shard_path(folder, start, start + len(feats16), sha256_file(tmp))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


def build_feature_cache(
    manifest: pd.DataFrame,
    split: str,
    audio_dir: str | os.PathLike,
    extractor: LogMelExtractor,
    stats: dict,
    out_npy: str | os.PathLike,
    out_index_csv: str | os.PathLike,
    *,
    batch_size: int,
    progress: bool = True,
    shard_batches: int = SHARD_BATCHES,
) -> dict:
    """Standardised float16 log-mel cache (N, n_mels, T) of one split plus its row index CSV.

    Resumable: completed shards of ``shard_batches * batch_size`` rows go to
    ``<out_npy>.parts/<key>/`` (each written atomically, its row range and checksum in its name).
    A rerun validates and keeps them and computes only the missing ones; a corrupt or truncated
    shard is recomputed. ``<key>`` hashes the split's manifest rows, the stats, the extractor
    settings/filterbanks and the clip length, so shards of another configuration are never used
    (they are deleted). The final .npy is assembled through a memmap, hashed, renamed into place,
    and the parts folder removed. Output bytes do not depend on batch or shard sizes.
    """
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"manifest has no rows with split '{split}'")
    missing = [c for c in INDEX_COLUMNS[1:] if c not in rows.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing} needed for the cache index")
    if batch_size < 1 or shard_batches < 1:
        raise ValueError(f"batch_size and shard_batches must be >= 1, got {batch_size}, {shard_batches}")
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    if mean.shape != (extractor.n_mels,) or std.shape != (extractor.n_mels,):
        raise ValueError(f"stats have shapes {mean.shape}/{std.shape}, expected ({extractor.n_mels},)")
    if np.any(~(std > 0)):
        raise ValueError("stats contain a non-positive std; cannot standardise")
    mean32, inv_std32 = mean.astype(np.float32)[:, None], (1.0 / std).astype(np.float32)[:, None]
    check_devices(extractor, rows, split)  # unknown device: fail before any work

    n_samples = len(read_wave(audio_path(audio_dir, str(rows["filename"].iloc[0]))))
    shape = (extractor.n_mels, extractor.n_frames(n_samples))
    out_npy = Path(out_npy)
    parts_root = out_npy.with_name(out_npy.name + ".parts")
    parts = parts_root / cache_key(rows, extractor, stats, n_samples)[:32]
    if parts_root.exists():  # shards of another configuration (or stale temp files) are never reused
        for other in parts_root.iterdir():
            if other != parts:
                shutil.rmtree(other) if other.is_dir() else other.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob(".tmp-*"):
        stale.unlink()

    shard_rows = batch_size * shard_batches
    ranges = [(s, min(s + shard_rows, len(rows))) for s in range(0, len(rows), shard_rows)]
    done: dict[tuple[int, int], Path] = {}
    for path in sorted(parts.glob("rows-*.npy")):
        m = _SHARD_NAME.match(path.name)
        key = (int(m[1]), int(m[2])) if m else None
        if key in ranges and key not in done and _valid_shard(path, *key, shape):
            done[key] = path
        else:
            path.unlink()  # corrupt, truncated, misnamed or from another shard size: recompute
    todo = [r for r in ranges if r not in done]
    with tqdm(total=len(rows), initial=len(rows) - sum(b - a for a, b in todo), desc=f"features {split}",
              unit="clip", disable=not progress) as bar:
        for start, stop in todo:
            feats16 = np.empty((stop - start, *shape), dtype=np.float16)
            for offset, feats in iter_log_mel(rows.iloc[start:stop], audio_dir, extractor, batch_size=batch_size,
                                              progress=False, desc="", expected_length=n_samples):
                feats16[offset : offset + len(feats)] = (feats - mean32) * inv_std32
                bar.update(len(feats))
            done[start, stop] = _write_shard(parts, start, feats16)
            del feats16

    with atomic_path(out_npy) as tmp:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(rows), *shape))
        for start, stop in ranges:
            cache[start:stop] = np.load(done[start, stop], mmap_mode="r", allow_pickle=False)
            cache.flush()
        del cache
        digest = sha256_file(tmp)

    index = rows[list(INDEX_COLUMNS[1:])].copy()
    index.insert(0, "row", np.arange(len(rows)))
    with atomic_path(out_index_csv) as tmp:
        index.to_csv(tmp, index=False)
    shutil.rmtree(parts_root, ignore_errors=True)
    return {
        "split": split,
        "n_files": int(len(rows)),
        "shape": [len(rows), *shape],
        "dtype": "float16",
        "sha256": digest,
        "npy": str(out_npy),
        "index_csv": str(out_index_csv),
    }


def load_feature_cache(
    npy: str | os.PathLike, index_csv: str | os.PathLike, mmap: bool = True
) -> tuple[np.ndarray, pd.DataFrame]:
    """The cache array (memory-mapped by default) and its index; ValueError if they do not match."""
    array = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    index = pd.read_csv(index_csv, dtype={"filename": str, "device": str, "identifier": str, "group": str})
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{index_csv}: missing columns {missing}")
    if array.ndim != 3:
        raise ValueError(f"{npy}: expected a 3-d array (N, n_mels, T), got shape {array.shape}")
    if len(index) != array.shape[0]:
        raise ValueError(f"{npy} has {array.shape[0]} rows but {index_csv} lists {len(index)}")
    if not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise ValueError(f"{index_csv}: column 'row' is not 0..{len(index) - 1} in order (does not match {npy})")
    return array, index
