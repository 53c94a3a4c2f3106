"""Signal-processing primitives below both the spectrum correction and the features (docs/reproduction.md §2-§3):
the per-clip thread pool, the magnitude STFT (periodic Hann, centre, reflect pad) and the Slaney mel
filterbank. Nothing here knows about devices, files or caches.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import scipy.fft
import torch

# ------------------------------------------------------------------------------------------ threads
# CPU work is done one clip at a time, in blocks of FRAME_BLOCK frames, with clips spread over a pool of Python
# threads (numpy and scipy release the GIL). The pool has clip_workers() threads: the job's cores
# (set_clip_workers, by the feature jobs), else torch.get_num_threads(). Inside a clip every library runs
# single-threaded, so a clip's numbers depend only on the clip: never on the batch, the pool size, the chunking
# or the machine's core count.
# Measured on a 2-core box (benchmarks/bench_features.py): an FFT is several times faster on 128-frame blocks
# than on one 1,724-frame call (the frames stay in cache), and whole clips per thread need no barrier per op.
FRAME_BLOCK = 128
_CLIP_WORKERS: list[int] = []


def set_clip_workers(n: int | None) -> None:
    """Threads of the per-clip pool (None: torch.get_num_threads()). Results do not depend on it."""
    _CLIP_WORKERS[:] = [] if n is None else [max(1, int(n))]


def clip_workers() -> int:
    return _CLIP_WORKERS[0] if _CLIP_WORKERS else max(1, torch.get_num_threads())


@contextlib.contextmanager
def clip_pool() -> Iterator:
    """Yield ``run(fn, items) -> list`` that maps ``fn`` over ``items`` on clip_workers() threads, with every
    BLAS single-threaded meanwhile (numpy's OpenBLAS; torch's own threads are set per worker)."""
    n_threads = clip_workers()
    with _single_threaded_blas():
        if n_threads == 1:
            yield lambda fn, items: [fn(i) for i in items]
            return

        torch_threads = torch.get_num_threads()

        def worker_init() -> None:
            torch.set_num_threads(1)  # this thread's OpenMP/MKL setting (torch also stores it as the default)

        try:
            with ThreadPoolExecutor(n_threads, initializer=worker_init, thread_name_prefix="heatedasc-clip") as pool:
                yield lambda fn, items: list(pool.map(fn, items))
        finally:
            torch.set_num_threads(torch_threads)  # restore the process-wide default the workers overwrote


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then OPENBLAS_NUM_THREADS (heatedasc.pinning) is all there is
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


# --------------------------------------------------------------------------------------------- STFT
# The CPU path computes with numpy and scipy only, never with torch's MKL: torch's CPU FFT, float32 GEMM and
# its sqrt/log (MKL VML) follow MKL's reproducibility branch (MKL_CBWR) only on Intel CPUs (MKL documents that a
# non-Intel CPU runs the AUTO branch; measured with benchmarks/cpu_kernels.py under an emulated AMD CPU), so
# they would give other bits on AMD. Here: scipy.fft's pocketfft (compiled once, no run-time CPU dispatch),
# |X| = sqrt(re² + im²) from correctly rounded IEEE operations (the same bits on every CPU), and — pinned by
# heatedasc.pinning — numpy's OpenBLAS for the mel product and numpy's log. Accelerators keep torch.
def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (float32), 0.5 − 0.5·cos(2πn/N), evaluated in float64 with numpy."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


def stft_magnitude(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """Magnitude STFT of a batch of waveforms [B, S] -> [B, n_fft//2 + 1, T].

    Same numbers as ``torch.stft(center=True, pad_mode="reflect", window=hann(periodic)).abs()`` (to
    float32 rounding), computed per clip on blocks of frames (magnitude_blocks) on the CPU.
    """
    if waves.ndim != 2:
        raise ValueError(f"stft_magnitude expects waves of shape [B, S], got {tuple(waves.shape)}")
    if waves.device.type != "cpu":
        return magnitude_frames(waves, n_fft=n_fft, hop_length=hop_length, remove_dc=remove_dc).transpose(1, 2)
    frames = stft_frame_count(waves.shape[1], n_fft, hop_length)
    out = waves.new_empty(waves.shape[0], frames, n_fft // 2 + 1, dtype=torch.float32)
    out_np, waves_np = out.numpy(), waves.detach().to(torch.float32).numpy()
    window = hann_window(n_fft)

    def one(i: int) -> None:
        for s, blk in magnitude_blocks(waves_np[i], window, hop_length, remove_dc):
            out_np[i, s : s + len(blk)] = blk

    with clip_pool() as run:
        run(one, range(waves.shape[0]))
    return out.transpose(1, 2)


def stft_frame_count(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Number of frames of a centred STFT; ValueError if the clip is too short for reflect padding."""
    if n_samples <= n_fft // 2:
        raise ValueError(f"waveform of {n_samples} samples is too short for reflect padding of {n_fft // 2}")
    return n_samples // hop_length + 1


def magnitude_blocks(
    wave: np.ndarray | torch.Tensor, window: np.ndarray, hop_length: int, remove_dc: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, |STFT| [b, F] float32) for blocks of FRAME_BLOCK frames of one CPU waveform [S]."""
    wave = wave.detach().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    wave = wave.astype(np.float32, copy=False)
    n_fft = window.shape[0]
    stft_frame_count(wave.shape[0], n_fft, hop_length)
    if remove_dc:
        wave = wave - np.float32(wave.mean(dtype=np.float64))
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]  # [T, n_fft], a view
    for s in range(0, frames.shape[0], FRAME_BLOCK):
        spectrum = scipy.fft.rfft(frames[s : s + FRAME_BLOCK] * window, n=n_fft, axis=-1, workers=1)
        real, imag = spectrum.real, spectrum.imag
        power = real * real
        power += imag * imag
        yield s, np.sqrt(power, out=power)


def magnitude_frames(waves: torch.Tensor, *, n_fft: int, hop_length: int, remove_dc: bool) -> torch.Tensor:
    """Batched |STFT| laid out [B, T, F] (accelerator path: one big call is what a GPU wants)."""
    if waves.ndim != 2:
        raise ValueError(f"stft_magnitude expects waves of shape [B, S], got {tuple(waves.shape)}")
    if remove_dc:
        waves = waves - waves.mean(dim=1, keepdim=True)
    stft_frame_count(waves.shape[1], n_fft, hop_length)
    pad = n_fft // 2
    padded = torch.nn.functional.pad(waves.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    frames = padded.unfold(-1, n_fft, hop_length)  # [B, T, n_fft], a view
    window = torch.hann_window(n_fft, periodic=True, dtype=waves.dtype, device=waves.device)
    spectrum = torch.view_as_real(torch.fft.rfft(frames * window, n=n_fft, dim=-1))  # [B, T, F, 2]
    real, imag = spectrum[..., 0], spectrum[..., 1]
    return torch.addcmul(real * real, imag, imag).sqrt_()


# ---------------------------------------------------------------------------------------------- mel
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


def mel_band_runs(nonzero: np.ndarray, call_cost: int = 2000) -> list[tuple[int, int, int, int]]:
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
