"""Audio I/O and the downmix / resample / fixed-length step of the prepare stage."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from heatedasc.fileio import DiskFullError, atomic_path, free_bytes


def _soundfile():
    """soundfile, imported when audio is read or written: the feature extractor itself (and a bare CUDA
    machine running benchmarks/gpu_check.py) does not need libsndfile."""
    import soundfile

    return soundfile


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 ``[channels, samples]`` and its sample rate."""
    try:
        data, sr = _soundfile().read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError for bad files
        raise ValueError(f"{path}: cannot read audio ({exc})") from exc
    return np.ascontiguousarray(data.T), int(sr)


def wav_data_extent(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(bytes the header's data chunk declares, bytes the file really holds after it, block align) of a WAV.

    libsndfile silently shortens a cut-off file to the samples that are there, so a truncated copy reads as
    a short clip; only the RIFF header tells. None when the file is not RIFF/WAVE, has no readable data
    chunk, or the writer left the size open (0 or 0xFFFFFFFF, as streaming writers do).
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(fh.fileno()).st_size
        pos, block_align = 12, 0
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", fh.read(8))
            if chunk_id == b"fmt " and chunk_size >= 14:
                block_align = struct.unpack(endian + "H", fh.read(14)[12:14])[0]
            elif chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF) or block_align <= 0:
                    return None
                return chunk_size, size - (pos + 8), block_align
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def to_mono_fixed(
    wave: np.ndarray, sr: int, *, target_sr: int, n_samples: int
) -> tuple[np.ndarray, list[str]]:
    """Mean over channels, resample to ``target_sr``, zero-pad/trim to exactly ``n_samples``.

    Returns the float32 signal and a list of the changes made (for the prepare report).
    """
    changes: list[str] = []
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None, :]
    if wave.ndim != 2:
        raise ValueError(f"expected [channels, samples] audio, got shape {wave.shape}")
    if wave.shape[0] > 1:
        changes.append(f"downmix {wave.shape[0]}ch")
    mono = wave.mean(axis=0, dtype=np.float64).astype(np.float32)
    if int(sr) != int(target_sr):
        import torch
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), int(sr), int(target_sr)).numpy().astype(np.float32)
        changes.append(f"resample {int(sr)}->{int(target_sr)}")
    n = mono.shape[0]
    if n < n_samples:
        mono = np.concatenate([mono, np.zeros(n_samples - n, dtype=np.float32)])
        changes.append(f"pad {n_samples - n} samples")
    elif n > n_samples:
        mono = mono[:n_samples]
        changes.append(f"trim {n - n_samples} samples")
    return np.ascontiguousarray(mono, dtype=np.float32), changes


SAMPLE_BYTES = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
WAV_HEADER_BYTES = 44


def write_wav(path: str | os.PathLike, wave: np.ndarray, sr: int, subtype: str = "PCM_24") -> None:
    """Write ``wave`` ([samples] or [channels, samples]) as WAV, atomically. libsndfile reports a full disk as
    "System error."; checked against the free space first, it is a DiskFullError naming the file and the bytes."""
    wave = np.asarray(wave)
    data = wave.T if wave.ndim == 2 else wave
    size = WAV_HEADER_BYTES + data.size * SAMPLE_BYTES.get(subtype, 4)
    with atomic_path(Path(path), size=size) as tmp:
        try:
            _soundfile().write(str(tmp), data, int(sr), subtype=subtype, format="WAV")
        except RuntimeError as exc:  # soundfile.LibsndfileError
            if free_bytes(tmp) < size:
                raise DiskFullError(path, size) from exc
            raise


# ------------------------------------------------------------------------------ prepared clips
def audio_path(audio_dir: str | os.PathLike, filename: str) -> Path:
    """Prepared audio of a manifest row: ``<audio_dir>/<basename of filename>``."""
    return Path(audio_dir) / Path(str(filename)).name


def read_wave(path: str | os.PathLike, expected_length: int | None = None) -> np.ndarray:
    """One mono float32 waveform; ValueError naming the file if unreadable, not mono or off-length."""
    try:
        x, _ = _soundfile().read(str(path), dtype="float32", always_2d=False)
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
    length = expected_length
    for p in paths:
        x = read_wave(p, length)
        length = len(x) if length is None else length
        waves.append(x)
    if length is None:
        raise ValueError("read_batch: no paths given")
    return np.stack(waves), length
