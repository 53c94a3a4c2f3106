"""Log-mel features (docs/reproduction.md §3) with the spectrum correction folded into per-device mel filterbanks.

Pipeline per clip: remove DC → |STFT| (periodic Hann, centre, reflect pad) → per-device filterbank
diag(c_d)·M (Slaney mel, Slaney norm) → log(mel + offset) → standardise per mel bin with float64
training statistics (``heatedasc.feature_stats``) → float16 cache of shape (N, n_mels, n_frames)
(stored by ``heatedasc.feature_cache``). The STFT and the filterbank are ``heatedasc.dsp``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from heatedasc.audio import audio_path, read_wave
from heatedasc.codedeps import module_closure_digest
from heatedasc.correction import load_coefficients
from heatedasc.dsp import (
    clip_pool,
    hann_window,
    magnitude_blocks,
    magnitude_frames,
    mel_band_runs,
    mel_filterbank,
    stft_frame_count,
)
from heatedasc.feature_cache import INDEX_COLUMNS, SHARD_BATCHES, ShardedCacheWriter, cache_key, write_index
from heatedasc.hashing import digest
from heatedasc.runtime import resolve_device


# ---------------------------------------------------------------------------------------- extractor
class LogMelExtractor(torch.nn.Module):
    """Batched log-mel extractor; device d's correction c_d is folded into its own filterbank."""

    filterbanks: torch.Tensor  # the registered buffer [D, F, n_mels] (for the type checker)

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
        self.band_runs = mel_band_runs((mel != 0).numpy())  # the pattern c_d cannot widen
        # Accelerator path only: clips per batched call. The CPU path works one clip at a time.
        self.cpu_chunk_clips = int(cpu_chunk_clips)
        self._cpu_window = hann_window(self.n_fft)
        self._cpu_bands: list | None = None
        self._cpu_runs()  # built now, before pool threads share the extractor

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred STFT of ``n_samples`` samples (862 for 10 s at 44.1 kHz, hop 512)."""
        return stft_frame_count(int(n_samples), self.n_fft, self.hop_length)

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
        with clip_pool() as run:
            run(lambda i: self.clip_log_mel(waves[i], index[i], out=out[i]), range(waves.shape[0]))
        return out

    def clip_log_mel(self, wave: torch.Tensor, device_index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel [n_mels, T] of one CPU waveform [S] with filterbank ``device_index`` (CPU path).

        Frames are processed in blocks of FRAME_BLOCK; the mel product is a few dense products over the
        filterbank's band runs. numpy and scipy only (heatedasc.dsp: no MKL), single-threaded per clip.
        """
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if out is None:
            out = wave.new_empty(self.n_mels, self.n_frames(wave.shape[0]))
        runs = self._cpu_runs()[int(device_index)]
        out_np = out.numpy()
        offset = np.float32(self.log_offset)
        for s, magnitude in magnitude_blocks(wave, self._cpu_window, self.hop_length, self.remove_dc):
            mel = np.empty((magnitude.shape[0], self.n_mels), dtype=np.float32)  # [b, n_mels]
            for m0, m1, f0, f1, weights in runs:
                np.matmul(magnitude[:, f0:f1], weights, out=mel[:, m0:m1])
            mel += offset
            out_np[:, s : s + mel.shape[0]] = np.log(mel, out=mel).T
        return out

    def _cpu_runs(self) -> list[list[tuple[int, int, int, int, np.ndarray]]]:
        """Per device: (m0, m1, f0, f1, contiguous float32 weights [f1-f0, m1-m0]) of each band run."""
        if self._cpu_bands is None:
            banks = self.filterbanks.detach().cpu().numpy()
            self._cpu_bands = [
                [(m0, m1, f0, f1, np.ascontiguousarray(bank[f0:f1, m0:m1])) for m0, m1, f0, f1 in self.band_runs]
                for bank in banks
            ]
        return self._cpu_bands

    def _forward_batched(self, waves: torch.Tensor, device_index: torch.Tensor) -> torch.Tensor:
        """Accelerator path: one batched STFT and a dense product per device."""
        magnitude = magnitude_frames(waves, n_fft=self.n_fft, hop_length=self.hop_length,
                                     remove_dc=self.remove_dc)  # [B, T, F]
        mel = magnitude.new_empty(magnitude.shape[0], magnitude.shape[1], self.n_mels)
        for d in torch.unique(device_index).tolist():
            rows = torch.nonzero(device_index == d).flatten()
            mel[rows] = magnitude[rows] @ self.filterbanks[d]
        return torch.log(mel + self.log_offset).transpose(1, 2).contiguous()


# ------------------------------------------------------------------------------------------- driver
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
    files = [Path(p) for p in paths]
    index = [int(i) for i in torch.as_tensor(device_index).tolist()]
    n_frames = extractor.n_frames(n_samples)
    cpu = extractor.filterbanks.device.type == "cpu"
    with clip_pool() as run:
        for start in range(0, len(files), batch_size):
            stop = min(start + batch_size, len(files))
            if cpu:
                feats = torch.empty(stop - start, extractor.n_mels, n_frames)

                def one(i: int) -> None:
                    wave = torch.from_numpy(load(files[i]))
                    extractor.clip_log_mel(wave, index[i], out=feats[i - start])

                run(one, range(start, stop))
            else:
                waves = np.stack(run(load, files[start:stop]))
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
    # pragma: no mutate start  (the progress bar: display only)
    bar = tqdm(total=len(rows), desc=desc, unit="clip", disable=not progress)
    # pragma: no mutate end
    with torch.inference_mode(), bar:
        for start, feats in log_mel_files(
            paths, index, extractor, batch_size=batch_size, n_samples=expected_length,
            load=lambda p: read_wave(p, expected_length),
        ):
            yield start, feats
            bar.update(len(feats))  # pragma: no mutate


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


def make_extractor(
    coefficients_path: str | os.PathLike, *, sample_rate: int, devices: Sequence[str], device: str = "cpu",
    **settings,
) -> LogMelExtractor:
    """One correction's extractor (its c_d folded into the filterbanks) on ``execution.features.device``.

    On CUDA every batch is one batched STFT + mel product on the device; the numbers match the CPU
    path to float32 rounding, so caches do not depend on where they were made.
    """
    coefficients, _ = load_coefficients(coefficients_path)
    extractor = LogMelExtractor(sample_rate=sample_rate, coefficients=coefficients, devices=devices, **settings)
    return extractor.to(resolve_device(device, "execution.features.device"))


# ------------------------------------------------------------------------------------------ cache
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
    progress: bool = True,  # pragma: no mutate  (progress-bar display)
    shard_batches: int = SHARD_BATCHES,
) -> dict:
    """Standardised float16 log-mel cache (N, n_mels, T) of one split plus its row index CSV.

    Resumable (``feature_cache.ShardedCacheWriter``): completed shards of ``shard_batches * batch_size``
    rows go to ``<out_npy>.parts/<key>/`` (each written atomically, its row range and checksum in its name).
    A rerun validates and keeps them and computes only the missing ones; a corrupt or truncated
    shard is recomputed. ``<key>`` hashes the split's manifest rows, the stats, the extractor
    settings/filterbanks, the clip length, the audio folder's and the code's content, so shards of another
    configuration are never used
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
    # what else the shards depend on: the audio they were computed from and the code, by content
    origin = {"audio": digest(audio_dir), "code": module_closure_digest("features")}
    writer = ShardedCacheWriter(out_npy, cache_key(rows, extractor, stats, n_samples, origin), len(rows), shape,
                                shard_rows=batch_size * shard_batches)
    todo = writer.missing
    # pragma: no mutate start  (the progress bar: display only)
    bar = tqdm(total=len(rows), initial=len(rows) - sum(b - a for a, b in todo), desc=f"features {split}",
               unit="clip", disable=not progress)
    # pragma: no mutate end
    with bar:
        for start, stop in todo:
            feats16 = np.empty((stop - start, *shape), dtype=np.float16)
            shard = iter_log_mel(rows.iloc[start:stop], audio_dir, extractor, batch_size=batch_size,
                                 expected_length=n_samples, progress=False, desc="")
            for offset, feats in shard:
                feats16[offset : offset + len(feats)] = (feats - mean32) * inv_std32
                bar.update(len(feats))  # pragma: no mutate
            writer.write_shard(start, feats16)
            del feats16

    cache_sha = writer.assemble()
    write_index(rows, out_index_csv)
    writer.remove_parts()
    return {
        "split": split,
        "n_files": int(len(rows)),
        "shape": [len(rows), *shape],
        "dtype": "float16",
        "sha256": cache_sha,
        "npy": str(out_npy),
        "index_csv": str(out_index_csv),
    }

