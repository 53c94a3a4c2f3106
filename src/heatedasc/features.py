"""Log-mel features (SPEC §3) with the spectrum correction folded into per-device mel filterbanks.

Pipeline per clip: remove DC → |STFT| (periodic Hann, centre, reflect pad) → per-device filterbank
diag(c_d)·M (Slaney mel, Slaney norm) → log(mel + offset) → standardise per mel bin with float64
training statistics → float16 cache of shape (N, n_mels, n_frames).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from heatedasc.fileio import atomic_path

INDEX_COLUMNS = ("row", "filename", "scene_label", "label", "device", "identifier", "group")


# --------------------------------------------------------------------------------------------- STFT
def stft_magnitude(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """Magnitude STFT of a batch of waveforms [B, S] -> [B, n_fft//2 + 1, T].

    Same numbers as ``torch.stft(center=True, pad_mode="reflect", window=hann(periodic)).abs()`` (to
    float32 rounding, ~1e-6 of 13 measured), computed with ``unfold`` + ``torch.fft.rfft`` and a real
    sqrt(re² + im²) because that is faster on CPU.
    """
    return _frame_magnitude(waves, n_fft=n_fft, hop_length=hop_length, remove_dc=remove_dc).transpose(1, 2)


def _frame_magnitude(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """|STFT| laid out [B, T, F] (the layout rfft produces; the mel matmul wants it too)."""
    if waves.ndim != 2:
        raise ValueError(f"stft_magnitude expects waves of shape [B, S], got {tuple(waves.shape)}")
    if remove_dc:
        waves = waves - waves.mean(dim=1, keepdim=True)
    pad = n_fft // 2
    if waves.shape[1] <= pad:
        raise ValueError(f"waveform of {waves.shape[1]} samples is too short for reflect padding of {pad}")
    padded = torch.nn.functional.pad(waves.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    frames = padded.unfold(-1, n_fft, hop_length)  # [B, T, n_fft], a view
    window = torch.hann_window(n_fft, periodic=True, dtype=waves.dtype, device=waves.device)
    spectrum = torch.view_as_real(torch.fft.rfft(frames * window, n=n_fft, dim=-1))  # [B, T, F, 2]
    real, imag = spectrum[..., 0], spectrum[..., 1]
    return torch.addcmul(real * real, imag, imag).sqrt_()  # ~3x faster than complex abs() on CPU


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank [n_fft//2 + 1, n_mels] (librosa.filters.mel defaults)."""
    import torchaudio

    return torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1,
        f_min=float(f_min),
        f_max=float(f_max),
        n_mels=n_mels,
        sample_rate=int(sample_rate),
        norm="slaney",
        mel_scale="slaney",
    )


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
        self.log_offset = float(log_offset)
        self.remove_dc = bool(remove_dc)
        n_freqs = self.n_fft // 2 + 1
        mel = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).to(torch.float64)
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
        self.cpu_chunk_clips = int(cpu_chunk_clips)

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

    def forward(self, waves: torch.Tensor, device_index: torch.Tensor) -> torch.Tensor:
        """waves [B, S] float, device_index LongTensor [B] -> log-mel [B, n_mels, T]."""
        waves = waves.to(device=self.filterbanks.device, dtype=torch.float32)
        device_index = device_index.to(self.filterbanks.device)
        if waves.shape[0] != device_index.shape[0]:
            raise ValueError(f"{waves.shape[0]} waveforms but {device_index.shape[0]} device indices")
        if device_index.numel() and not (0 <= int(device_index.min()) and int(device_index.max()) < len(self.devices)):
            raise ValueError(f"device_index out of range for devices {list(self.devices)}")
        # The Slaney bank has ~2k non-zeros of 262k: a sparse product is ~10x cheaper than a dense one.
        sparse_banks = [bank.T.to_sparse() for bank in self.filterbanks]  # [n_mels, F] each
        # Small CPU chunks keep the frames in cache (measured ~2x faster than 16 clips at once).
        chunk = self.cpu_chunk_clips if waves.device.type == "cpu" else waves.shape[0]
        out = []
        for start in range(0, waves.shape[0], chunk):
            magnitude = _frame_magnitude(
                waves[start : start + chunk], n_fft=self.n_fft, hop_length=self.hop_length, remove_dc=self.remove_dc
            )  # [b, T, F]
            b, n_frames, n_freqs = magnitude.shape
            mel = magnitude.new_empty(b, self.n_mels, n_frames)
            index = device_index[start : start + chunk]
            for d in torch.unique(index).tolist():
                rows = torch.nonzero(index == d).flatten()
                spectra = magnitude[rows].reshape(-1, n_freqs).T.contiguous()  # [F, k*T]
                product = torch.sparse.mm(sparse_banks[d], spectra)  # [n_mels, k*T]
                mel[rows] = product.reshape(self.n_mels, len(rows), n_frames).transpose(0, 1)
            out.append(torch.log(mel + self.log_offset))
        return torch.cat(out)


# ------------------------------------------------------------------------------------------- audio
def audio_path(audio_dir: str | os.PathLike, filename: str) -> Path:
    """Prepared audio of a manifest row: ``<audio_dir>/<basename of filename>``."""
    return Path(audio_dir) / Path(str(filename)).name


def read_batch(paths: Sequence[Path], expected_length: int | None) -> tuple[np.ndarray, int]:
    """Read mono float32 waveforms of equal length; ValueError naming a file that differs."""
    import soundfile as sf

    waves = []
    for p in paths:
        try:
            x, _ = sf.read(str(p), dtype="float32", always_2d=False)
        except Exception as exc:  # soundfile raises several types; name the file either way
            raise ValueError(f"{p}: cannot read audio ({exc})") from exc
        if x.ndim != 1:
            raise ValueError(f"{p}: expected mono audio, got {x.shape[1]} channels")
        if expected_length is None:
            expected_length = len(x)
        elif len(x) != expected_length:
            raise ValueError(f"{p}: {len(x)} samples, but other files have {expected_length}")
        waves.append(x)
    return np.stack(waves), expected_length


def iter_log_mel(
    rows: pd.DataFrame,
    audio_dir: str | os.PathLike,
    extractor: LogMelExtractor,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start row, log-mel batch [b, n_mels, T] float32 numpy) over ``rows`` in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Check every device before reading any audio, so an unknown device fails at once.
    index = extractor.device_indices(list(rows["device"].astype(str)))
    filenames = list(rows["filename"].astype(str))
    length = None
    with torch.inference_mode(), tqdm(total=len(rows), desc=desc, unit="clip", disable=not progress) as bar:
        for start in range(0, len(rows), batch_size):
            stop = min(start + batch_size, len(rows))
            waves, length = read_batch([audio_path(audio_dir, f) for f in filenames[start:stop]], length)
            feats = extractor(torch.from_numpy(waves), index[start:stop])
            yield start, feats.cpu().numpy()
            bar.update(stop - start)


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
) -> dict:
    """Standardised float16 log-mel cache (N, n_mels, T) of one split plus its row index CSV."""
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"manifest has no rows with split '{split}'")
    missing = [c for c in INDEX_COLUMNS[1:] if c not in rows.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing} needed for the cache index")
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    if mean.shape != (extractor.n_mels,) or std.shape != (extractor.n_mels,):
        raise ValueError(f"stats have shapes {mean.shape}/{std.shape}, expected ({extractor.n_mels},)")
    if np.any(~(std > 0)):
        raise ValueError("stats contain a non-positive std; cannot standardise")
    mean32, inv_std32 = mean.astype(np.float32)[:, None], (1.0 / std).astype(np.float32)[:, None]

    out_npy = Path(out_npy)
    cache = None
    with atomic_path(out_npy) as tmp:
        for start, feats in iter_log_mel(
            rows, audio_dir, extractor, batch_size=batch_size, progress=progress, desc=f"features {split}"
        ):
            if cache is None:  # shape known after the first batch
                shape = (len(rows), feats.shape[1], feats.shape[2])
                cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            cache[start : start + len(feats)] = ((feats - mean32) * inv_std32).astype(np.float16)
        cache.flush()
        del cache
        digest = sha256_file(tmp)

    index = rows[list(INDEX_COLUMNS[1:])].copy()
    index.insert(0, "row", np.arange(len(rows)))
    with atomic_path(out_index_csv) as tmp:
        index.to_csv(tmp, index=False)
    return {
        "split": split,
        "n_files": int(len(rows)),
        "shape": list(shape),
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
