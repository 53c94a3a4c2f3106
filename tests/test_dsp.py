"""heatedasc.dsp's contracts, each against an independent reference: the CPU STFT is pocketfft's float32 arithmetic
bit for bit (the identity across CPUs rests on it), the accelerator STFT matches a float64 numpy STFT, the mel-band
runs are an optimal partition (brute force) that covers every non-zero weight, and the clip pool size is what the
job asked for."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.fft
import torch

from heatedasc import dsp


def numpy_stft(wave: np.ndarray, n_fft: int, hop: int, remove_dc: bool) -> np.ndarray:
    """|STFT| [T, F] in float64: centred, reflect padding, periodic Hann (a transcription of the definition)."""
    x = wave.astype(np.float64)
    if remove_dc:
        x = x - x.mean()
    padded = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = len(x) // hop + 1
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(n_frames)])
    return np.abs(np.fft.rfft(frames * window, axis=-1))


def pocketfft_float32(wave: np.ndarray, n_fft: int, hop: int, remove_dc: bool) -> np.ndarray:
    """The CPU path's arithmetic spelled out: float32 samples, the mean taken in float64 and rounded to float32,
    float32 frames × float32 window, scipy's float32 rfft, sqrt(re² + im²) in float32."""
    x = wave.astype(np.float32)
    if remove_dc:
        x = x - np.float32(np.mean(x, dtype=np.float64))
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft, dtype=np.float64) / n_fft)).astype(np.float32)
    n_frames = len(x) // hop + 1
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(n_frames)])
    spectrum = scipy.fft.rfft(frames * window, axis=-1)
    return np.sqrt(spectrum.real * spectrum.real + spectrum.imag * spectrum.imag)


def test_hann_window_is_periodic_float32():
    w = dsp.hann_window(8)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.float32([0, 0.5 - 0.5 * np.sqrt(0.5), 0.5, 0.5 + 0.5 * np.sqrt(0.5), 1,
                                                 0.5 + 0.5 * np.sqrt(0.5), 0.5, 0.5 - 0.5 * np.sqrt(0.5)]))


@pytest.mark.parametrize("remove_dc", [True, False])
def test_the_cpu_stft_is_pocketffts_float32_arithmetic_bit_for_bit(remove_dc):
    """More frames than n_fft (so blocks of FRAME_BLOCK frames are walked along time, not frequency) and a DC offset
    (so the float64 mean matters); float64 input is computed in float32 all the same."""
    rng = np.random.default_rng(0)
    waves = 1000.3 + rng.standard_normal((3, 64 * 300)).astype(np.float64)
    single = waves.astype(np.float32)
    # on these clips a float32 mean rounds otherwise than the float64 mean does: the test sees which one is taken
    assert any(np.float32(w.mean(dtype=np.float64)) != w.mean() for w in single)
    got = dsp.stft_magnitude(torch.from_numpy(waves), n_fft=64, hop_length=16, remove_dc=remove_dc)
    assert got.dtype == torch.float32 and got.shape == (3, 33, 64 * 300 // 16 + 1)
    for i in range(3):
        np.testing.assert_array_equal(got[i].T.numpy(), pocketfft_float32(waves[i], 64, 16, remove_dc))


@pytest.mark.parametrize("remove_dc", [True, False])
def test_the_accelerator_stft_run_on_the_cpu_matches_a_float64_stft(remove_dc):
    rng = np.random.default_rng(1)
    waves = (0.2 + rng.standard_normal((2, 5000))).astype(np.float32)
    got = dsp.magnitude_frames(torch.from_numpy(waves), n_fft=128, hop_length=32, remove_dc=remove_dc)
    assert got.dtype == torch.float32 and got.shape == (2, 5000 // 32 + 1, 65)  # [B, T, F]
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), numpy_stft(waves[i], 128, 32, remove_dc), rtol=1e-4, atol=1e-4)


def test_the_accelerator_stft_of_float64_waves_is_float64_throughout():
    rng = np.random.default_rng(3)
    waves = rng.standard_normal((2, 3000))
    got = dsp.magnitude_frames(torch.from_numpy(waves), n_fft=128, hop_length=32, remove_dc=True)
    assert got.dtype == torch.float64
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), numpy_stft(waves[i], 128, 32, True), rtol=1e-10, atol=1e-10)


def test_an_accelerator_batch_is_handed_every_stft_setting(monkeypatch):
    calls = []

    def frames(waves, *, n_fft, hop_length, remove_dc):
        calls.append((n_fft, hop_length, remove_dc))
        return torch.zeros(waves.shape[0], 7, n_fft // 2 + 1, device=waves.device)

    monkeypatch.setattr(dsp, "magnitude_frames", frames)
    out = dsp.stft_magnitude(torch.zeros(2, 100, device="meta"), n_fft=8, hop_length=4, remove_dc=True)
    assert calls == [(8, 4, True)] and out.shape == (2, 5, 7)


def test_stft_shape_errors_and_the_shortest_clip():
    with pytest.raises(ValueError, match=r"^stft_magnitude expects waves of shape \[B, S\], got \(10,\)$"):
        dsp.stft_magnitude(torch.zeros(10), n_fft=8, hop_length=2, remove_dc=False)
    with pytest.raises(ValueError, match=r"^stft_magnitude expects waves of shape \[B, S\], got \(1, 1, 10\)$"):
        dsp.magnitude_frames(torch.zeros(1, 1, 10), n_fft=8, hop_length=2, remove_dc=False)
    # reflect padding of n_fft // 2 needs more than n_fft // 2 samples
    with pytest.raises(ValueError, match=r"^waveform of 256 samples is too short for reflect padding of 256$"):
        dsp.stft_frame_count(256, 512, 128)
    assert dsp.stft_frame_count(257, 512, 128) == 3
    with pytest.raises(ValueError, match="^waveform of 200 samples is too short"):
        dsp.stft_frame_count(200, 512, 128)


def test_the_clip_pool_has_the_threads_the_job_asked_for():
    try:
        dsp.set_clip_workers(3)
        assert dsp.clip_workers() == 3
        dsp.set_clip_workers(0)
        assert dsp.clip_workers() == 1
        dsp.set_clip_workers(None)
        assert dsp.clip_workers() == max(1, torch.get_num_threads())
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert dsp.clip_workers() == 1
        finally:
            torch.set_num_threads(threads)
    finally:
        dsp.set_clip_workers(None)


def test_mel_filterbank_is_float32_by_default_and_refuses_empty_bands():
    fb = dsp.mel_filterbank(16000, 512, 40, 0.0, 8000.0)
    assert fb.dtype == torch.float32 and fb.shape == (257, 40)
    assert dsp.mel_filterbank(16000, 512, 40, 0.0, 8000.0, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"^mel bands \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] are empty "
                                         r"\(n_mels 256 too high for n_fft 64\)$"):
        dsp.mel_filterbank(16000, 64, 256, 0.0, 8000.0)


def brute_force_runs(nonzero: np.ndarray, call_cost: int) -> float:
    """The least Σ width·bands + call_cost over every partition of the bands into contiguous runs."""
    n = nonzero.shape[1]
    rows = np.arange(nonzero.shape[0])
    best = np.inf
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            edges = (0, *cuts, n)
            cost = 0.0
            for s, e in zip(edges, edges[1:]):
                used = rows[nonzero[:, s:e].any(axis=1)]
                width = used.max() + 1 - used.min() if len(used) else 0
                cost += width * (e - s) + call_cost
            best = min(best, cost)
    return best


def random_bands(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_freqs, n_mels = 30, 6
    nonzero = np.zeros((n_freqs, n_mels), dtype=bool)
    for m in range(n_mels):  # banded like a mel filterbank, with random starts and widths
        lo = int(rng.integers(0, n_freqs - 3))
        nonzero[lo : lo + int(rng.integers(1, 8)), m] = True
    if seed == 5:
        nonzero[:, 2] = False  # an empty band
    return nonzero


def empty_between_high_bands() -> np.ndarray:
    """Two empty bands between narrow bands high up: an empty run must cost nothing and must not widen a run
    towards frequency 0."""
    nonzero = np.zeros((30, 4), dtype=bool)
    nonzero[24:26, 0] = nonzero[28:30, 3] = True
    return nonzero


@pytest.mark.parametrize("bands", [*(random_bands(seed) for seed in range(6)), empty_between_high_bands()])
@pytest.mark.parametrize("call_cost", [0, 3, 40])
def test_mel_band_runs_are_an_optimal_cover_of_every_nonzero_weight(bands, call_cost):
    nonzero = bands
    n_freqs, n_mels = nonzero.shape
    runs = dsp.mel_band_runs(nonzero, call_cost=call_cost)
    assert [r[0] for r in runs][0] == 0 and runs[-1][1] == n_mels
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))  # contiguous, in order
    for m0, m1, f0, f1 in runs:
        assert 0 <= f0 <= f1 <= n_freqs and m0 < m1
        outside = nonzero[:, m0:m1].copy()
        outside[f0:f1] = False
        assert not outside.any()  # every non-zero weight of the run lies in its frequency span
    cost = sum((f1 - f0) * (m1 - m0) + call_cost for m0, m1, f0, f1 in runs)
    assert cost == brute_force_runs(nonzero, call_cost)


def test_mel_band_runs_of_the_paper_filterbank_cover_it():
    fb = dsp.mel_filterbank(44100, 2048, 256, 0.0, 22050.0).numpy()
    runs = dsp.mel_band_runs(fb != 0)
    assert runs[0][0] == 0 and runs[-1][1] == 256 and 1 < len(runs) < 64
    x = np.random.default_rng(2).uniform(0, 1, (7, fb.shape[0])).astype(np.float64)
    dense = x @ fb.astype(np.float64)
    banded = np.concatenate([x[:, f0:f1] @ fb[f0:f1, m0:m1].astype(np.float64) for m0, m1, f0, f1 in runs], axis=1)
    np.testing.assert_allclose(banded, dense, rtol=1e-12, atol=1e-15)


def test_an_accelerator_batch_takes_the_batched_path_laid_out_like_the_cpu_path():
    """A tensor off the CPU goes through magnitude_frames, transposed to [B, F, T] (torch's meta device stands in for
    CUDA: shapes and dtypes without numbers)."""
    waves = torch.zeros(2, 1000, device="meta")
    for remove_dc in (True, False):
        out = dsp.stft_magnitude(waves, n_fft=64, hop_length=16, remove_dc=remove_dc)
        assert out.device.type == "meta" and out.dtype == torch.float32
        assert out.shape == (2, 33, 1000 // 16 + 1)
