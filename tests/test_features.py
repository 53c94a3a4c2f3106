"""Log-mel features: STFT shape and exactness (dsp), librosa parity, folded correction, stats (feature_stats),
cache (features.build_feature_cache writing through feature_cache)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import heatedasc.feature_cache as feature_cache_module
import heatedasc.features as features_module
from heatedasc.dsp import mel_filterbank, stft_magnitude
from heatedasc.feature_cache import cache_key, load_feature_cache, parts_root
from heatedasc.feature_stats import RunningMeanStd, compute_feature_stats, load_stats, save_stats
from heatedasc.features import SHARD_BATCHES, LogMelExtractor, build_feature_cache, iter_log_mel

torch.set_num_threads(2)

# Small configuration for the file-based tests (keeps them fast); the paper sizes are tested on arrays.
SMALL = dict(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32, f_min=0.0, f_max=8000.0,
             log_offset=1e-7, remove_dc=True)
PAPER = dict(sample_rate=44100, n_fft=2048, hop_length=512, n_mels=256, f_min=0.0, f_max=22050.0,
             log_offset=1e-7, remove_dc=True)


def coloured_noise(rng: np.random.Generator, n: int, dc: float = 0.0) -> np.ndarray:
    """Noise with a sloped spectrum plus a tone and a DC offset, so every band carries energy."""
    white = rng.standard_normal(n)
    brown = np.cumsum(white) / np.sqrt(n)
    t = np.arange(n) / 44100
    return (0.05 * white + 0.5 * brown + 0.1 * np.sin(2 * np.pi * 440 * t) + dc).astype(np.float32)


def write_dataset(tmp_path, rng, spec: list[tuple[str, str, str]], n_samples: int):
    """spec rows (group, device, split) -> (manifest, audio_dir) with one noise wav per row."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for group, device, split in spec:
        scene, city, location, segment = group.split("-")
        name = f"{group}-{device}.wav"
        gain = {"a": 1.0, "b": 0.5, "c": 2.0}.get(device, 1.0)
        sf.write(audio / name, gain * coloured_noise(rng, n_samples, dc=0.01), SMALL["sample_rate"], subtype="FLOAT")
        rows.append(dict(filename=f"audio/{name}", scene_label=scene, label=0, device=device, city=city,
                         location=location, segment=segment, identifier=f"{city}-{location}", group=group,
                         split=split, raw_md5="0" * 32))
    return pd.DataFrame(rows), audio


def test_stft_ten_seconds_is_1025_by_862_and_equals_torch_stft():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(coloured_noise(rng, 441000, dc=0.3))[None]
    mag = stft_magnitude(x, n_fft=2048, hop_length=512, remove_dc=True)
    assert mag.shape == (1, 1025, 862)
    # against torch.stft in float64: both float32 paths (ours, torch's) are ~3e-5 off it at a peak of ~300
    centred = x.double() - x.double().mean(dim=1, keepdim=True)
    ref = torch.stft(centred, 2048, 512, window=torch.hann_window(2048, periodic=True, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True).abs()
    torch.testing.assert_close(mag.double(), ref, rtol=1e-5, atol=1e-4)
    # remove_dc subtracts the waveform mean: on white noise + 0.3 the 0 Hz bin drops from ~0.3·Σw to noise.
    white = torch.from_numpy(0.1 * rng.standard_normal((1, 441000)).astype(np.float32)) + 0.3
    raw = stft_magnitude(white, n_fft=2048, hop_length=512, remove_dc=False)
    clean = stft_magnitude(white, n_fft=2048, hop_length=512, remove_dc=True)
    assert abs(raw[0, 0, 10:-10].mean().item() - 0.3 * 1024) < 10
    assert clean[0, 0, 10:-10].mean().item() < 10


def test_log_mel_matches_librosa_with_correction():
    """librosa reference: stft(center, reflect, hann) → |·|·c → filters.mel @ S → log(x + 1e-7).

    Measured max |error| in log-mel on this 3 s signal (n_mels 256, c in [0.30, 3.32]): 1.12e-4, mean
    2.7e-6: float32 STFT rounding in the weakest bands (the filterbank is built with librosa's float64
    formula and equals librosa.filters.mel). Tolerance 5e-4.
    """
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(1)
    x = coloured_noise(rng, 3 * 44100, dc=0.05)
    c = np.exp(np.sin(np.linspace(0, 12, 1025)) * 1.2)  # ~0.3 .. 3.3, far from ones
    extractor = LogMelExtractor(**PAPER, coefficients={"a": np.ones(1025), "b": c, "c": 1 / c})
    ours = extractor(torch.from_numpy(x)[None], torch.tensor([extractor.device_index_of("b")]))[0].numpy()

    y = x - x.mean()
    S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512, center=True, pad_mode="reflect", window="hann"))
    M = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=256, fmin=0.0, fmax=22050.0)
    ref = np.log(M @ (S * c[:, None]) + 1e-7)
    assert ours.shape == ref.shape == (256, 3 * 44100 // 512 + 1)
    assert np.abs(ours - ref).max() < 5e-4


def test_folded_filterbank_equals_scaling_magnitude_then_mel():
    rng = np.random.default_rng(2)
    waves = torch.from_numpy(np.stack([coloured_noise(rng, 8000), coloured_noise(rng, 8000)]))
    n_freqs = SMALL["n_fft"] // 2 + 1
    c_b = rng.uniform(0.2, 5.0, n_freqs)
    extractor = LogMelExtractor(**SMALL, coefficients={"a": np.ones(n_freqs), "b": c_b}, devices=("a", "b"))
    out = extractor(waves, torch.tensor([1, 0]))
    mag = stft_magnitude(waves, n_fft=512, hop_length=128, remove_dc=True).double()
    M = mel_filterbank(16000, 512, 32, 0.0, 8000.0).double()
    expected_b = torch.log(M.T @ (mag[0] * torch.from_numpy(c_b)[:, None]) + 1e-7)
    expected_a = torch.log(M.T @ mag[1] + 1e-7)
    torch.testing.assert_close(out[0].double(), expected_b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[1].double(), expected_a, rtol=1e-5, atol=1e-4)
    assert (out[0] - out[1]).abs().max() > 0.1  # the two devices really use different banks
    # Mixed devices across CPU chunks give the same rows as one clip at a time.
    mixed = torch.cat([waves, waves[:1]])
    index = torch.tensor([1, 0, 0])
    one_by_one = LogMelExtractor(**SMALL, coefficients={"a": np.ones(n_freqs), "b": c_b}, devices=("a", "b"),
                                 cpu_chunk_clips=1)
    torch.testing.assert_close(extractor(mixed, index), one_by_one(mixed, index))
    torch.testing.assert_close(extractor(mixed, index)[2].double(), torch.log(M.T @ mag[0] + 1e-7),
                               rtol=1e-5, atol=1e-4)


def test_accelerator_path_equals_the_cpu_path(tmp_path):
    """The batched path a CUDA features job takes (one STFT + one product per device), run here on the CPU:
    the same numbers as the per-clip CPU path, so a cache does not depend on where it was made."""
    from heatedasc.correction import save_coefficients
    from heatedasc.features import make_extractor
    from heatedasc.runtime import resolve_device

    rng = np.random.default_rng(12)
    waves = torch.from_numpy(np.stack([coloured_noise(rng, 3 * 44100, dc=0.02) for _ in range(3)]))
    c = {"a": np.ones(1025), "b": rng.uniform(0.3, 3.0, 1025), "c": rng.uniform(0.3, 3.0, 1025)}
    save_coefficients(tmp_path / "ref_abc.npz", c, correction="ref_abc", reference_devices=["a", "b", "c"],
                      estimator="ratio_of_means", files=["x"], sample_rate=44100, n_fft=2048)
    extractor = make_extractor(tmp_path / "ref_abc.npz", devices=("a", "b", "c"), device="auto", **PAPER)
    assert extractor.filterbanks.device == resolve_device("auto", "features.device")
    index = torch.tensor([2, 0, 1])
    with torch.inference_mode():
        batched = extractor._forward_batched(waves.float(), index)
        per_clip = extractor(waves, index)
    assert batched.shape == per_clip.shape == (3, 256, 3 * 44100 // 512 + 1)
    # Two float32 FFTs (torch's on the accelerator path, scipy's pocketfft on the CPU path). Measured against a
    # float64 reference: batched 1.6e-4, per clip 4.0e-5 (log-mel units); between the two 1.6e-4.
    torch.testing.assert_close(batched, per_clip, rtol=0, atol=3e-4)
    assert (batched[0] - batched[1]).abs().max() > 0.1  # device c's and a's banks really differ
    with pytest.raises(ValueError, match="features.device must be one of auto, cpu, cuda, got 'gpu'"):
        make_extractor(tmp_path / "ref_abc.npz", devices=("a", "b", "c"), device="gpu", **PAPER)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="features.device is 'cuda' but no CUDA device is available"):
            make_extractor(tmp_path / "ref_abc.npz", devices=("a", "b", "c"), device="cuda", **PAPER)


def test_unknown_device_is_an_error_naming_it(tmp_path):
    n_freqs = SMALL["n_fft"] // 2 + 1
    extractor = LogMelExtractor(**SMALL, coefficients={"a": np.ones(n_freqs), "b": np.ones(n_freqs)})
    assert extractor.devices == ("a", "b")
    with pytest.raises(ValueError, match="unknown device 'c'"):
        extractor.device_index_of("c")
    manifest, audio = write_dataset(tmp_path, np.random.default_rng(3),
                                    [("bus-lyon-1-0", "a", "train"), ("bus-lyon-1-0", "c", "train")], 4000)
    with pytest.raises(ValueError, match=r"unknown device 'c' in split 'train' \(1 file\(s\), e.g. audio/bus-lyon-1-0-c"):
        compute_feature_stats(manifest, audio, extractor, batch_size=2, progress=False)
    manifest["split"] = "evaluate"
    stats = {"mean": np.zeros(SMALL["n_mels"]), "std": np.ones(SMALL["n_mels"])}
    with pytest.raises(ValueError, match="unknown device 'c' in split 'evaluate'"):
        build_feature_cache(manifest, "evaluate", audio, extractor, stats, tmp_path / "e.npy", tmp_path / "e.csv",
                            batch_size=2, progress=False)
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.npy.parts").exists()


def test_running_stats_keep_precision_on_a_large_offset():
    rng = np.random.default_rng(4)
    chunks = [1e6 + 1e-3 * rng.standard_normal((3, 4, 50)) for _ in range(7)]
    running = RunningMeanStd(4)
    for chunk in chunks:
        running.update(chunk)
    flat = np.concatenate([c.transpose(1, 0, 2).reshape(4, -1) for c in chunks], axis=1)
    assert running.count == 7 * 3 * 50
    np.testing.assert_allclose(running.mean, flat.mean(axis=1), rtol=1e-12)
    # A sum-of-squares formula in float64 loses all digits here (x² ≈ 1e12, variance ≈ 1e-6).
    np.testing.assert_allclose(running.std, flat.std(axis=1), rtol=1e-6)


def test_standardised_train_cache_and_index(tmp_path):
    rng = np.random.default_rng(5)
    spec = [(f"park-lyon-{i}-0", d, "train") for i in range(3) for d in "abc"]
    spec += [("tram-oslo-9-0", "a", "evaluate"), ("tram-oslo-9-0", "b", "evaluate")]
    manifest, audio = write_dataset(tmp_path, rng, spec, 8000)
    n_freqs = SMALL["n_fft"] // 2 + 1
    coefficients = {d: rng.uniform(0.5, 2.0, n_freqs) for d in "abc"}
    extractor = LogMelExtractor(**SMALL, coefficients=coefficients)

    stats = compute_feature_stats(manifest, audio, extractor, batch_size=4, progress=False)
    save_stats(tmp_path / "stats.npz", stats)
    stats = load_stats(tmp_path / "stats.npz")
    n_frames = 8000 // 128 + 1
    assert stats["n_files"] == 9 and stats["n_frames"] == 9 * n_frames

    # Stats equal a direct float64 computation over every training frame.
    train = manifest[manifest.split == "train"]
    waves = np.stack([sf.read(audio / f.split("/")[1], dtype="float32")[0] for f in train.filename])
    direct = extractor(torch.from_numpy(waves), extractor.device_indices(list(train.device))).double().numpy()
    direct = direct.transpose(1, 0, 2).reshape(32, -1)
    np.testing.assert_allclose(stats["mean"], direct.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["std"], direct.std(axis=1), rtol=1e-9)

    info = build_feature_cache(manifest, "train", audio, extractor, stats, tmp_path / "c" / "train.npy",
                               tmp_path / "c" / "train.csv", batch_size=4, progress=False)
    cache = load_feature_cache(tmp_path / "c" / "train.npy", tmp_path / "c" / "train.csv")
    array, index = cache.features, cache.index
    assert array.dtype == np.float16 and array.shape == (9, 32, n_frames)
    assert info["shape"] == [9, 32, n_frames]
    assert info["sha256"] == hashlib.sha256((tmp_path / "c" / "train.npy").read_bytes()).hexdigest()
    per_bin = array.astype(np.float64).transpose(1, 0, 2).reshape(32, -1)
    np.testing.assert_allclose(per_bin.mean(axis=1), 0.0, atol=5e-3)
    np.testing.assert_allclose(per_bin.std(axis=1), 1.0, atol=5e-3)
    assert list(index.columns) == ["row", "filename", "scene_label", "label", "device", "identifier", "group"]
    assert index["filename"].tolist() == train["filename"].tolist()
    assert index["row"].tolist() == list(range(9))
    # Row i of the array is file i of the index.
    np.testing.assert_allclose(array[4].astype(np.float64), (direct.reshape(32, 9, n_frames)[:, 4] -
                               stats["mean"][:, None]) / stats["std"][:, None], atol=1e-2)

    build_feature_cache(manifest, "evaluate", audio, extractor, stats, tmp_path / "c" / "evaluate.npy",
                        tmp_path / "c" / "evaluate.csv", batch_size=4, progress=False)
    cache = load_feature_cache(tmp_path / "c" / "evaluate.npy", tmp_path / "c" / "evaluate.csv")
    array, index = cache.features, cache.index
    assert array.shape == (2, 32, n_frames) and index["device"].tolist() == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["evaluate.csv", "evaluate.npy",
                                                                 "train.csv", "train.npy"]


def test_cache_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(6)
    manifest, audio = write_dataset(tmp_path, rng, [("bus-rome-1-0", d, "train") for d in "abc"], 4000)
    sf.write(audio / "bus-rome-1-0-c.wav", np.zeros(3000, dtype=np.float32), 16000)
    extractor = LogMelExtractor(**SMALL)
    stats = {"mean": np.zeros(32), "std": np.ones(32), "n_frames": 1, "n_files": 1}
    out = tmp_path / "out" / "train.npy"
    with pytest.raises(ValueError, match=r"bus-rome-1-0-c\.wav: 3000 samples, but other files have 4000"):
        build_feature_cache(manifest, "train", audio, extractor, stats, out, tmp_path / "out" / "train.csv",
                            batch_size=2, progress=False)
    # Nothing half-written is left: no output, no temp file; at most the (empty) resumable parts folder.
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], ["train.npy.parts"])
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]

    manifest = manifest.iloc[:2]
    build_feature_cache(manifest, "train", audio, extractor, stats, out, tmp_path / "out" / "train.csv",
                        batch_size=2, progress=False)
    short = tmp_path / "out" / "short.csv"
    pd.read_csv(tmp_path / "out" / "train.csv").iloc[:1].to_csv(short, index=False)
    with pytest.raises(ValueError, match=re.escape(f"{short}: 1 rows but {out} holds 2 clips")):
        load_feature_cache(out, short)


def test_loading_a_cache_checks_it_against_its_index(tmp_path):
    """The one loader (training reads caches with it too): each mismatch is an error naming the file."""
    npy, csv = tmp_path / "x.npy", tmp_path / "x.csv"
    np.save(npy, np.zeros((3, 4, 5), dtype=np.float16))
    index = pd.DataFrame({"row": [0, 1, 2], "filename": ["audio/a.wav", "audio/b.wav", "audio/c.wav"],
                          "scene_label": "bus", "label": 1, "device": ["a", "b", "c"], "identifier": "lyon-1",
                          "group": ["g0", "g1", "g2"]})
    index.to_csv(csv, index=False)
    cache = load_feature_cache(npy, csv)
    assert cache.clip_shape == (4, 5) and cache.features.dtype == np.float16
    assert isinstance(cache.features, np.memmap) and cache.index["device"].tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'gone.npy'}: feature cache not found")):
        load_feature_cache(tmp_path / "gone.npy", csv)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'gone.csv'}: feature index not found")):
        load_feature_cache(npy, tmp_path / "gone.csv")
    np.save(tmp_path / "flat.npy", np.zeros((3, 20), dtype=np.float16))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'flat.npy'}: expected a (N, n_mels, n_frames) array, got shape (3, 20)")):
        load_feature_cache(tmp_path / "flat.npy", csv)
    index.drop(columns=["group", "label"]).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'cols.csv'}: missing column(s) label, group")):
        load_feature_cache(npy, tmp_path / "cols.csv")
    index.assign(row=[0, 2, 1]).to_csv(tmp_path / "order.csv", index=False)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'order.csv'}: column 'row' must be 0..2 in order")):
        load_feature_cache(npy, tmp_path / "order.csv")


# ------------------------------------------------------------------------------ determinism, resume
def test_clip_features_do_not_depend_on_batch_pool_or_blocks():
    """Bit-identical rows whatever the batch composition, thread-pool size or frame-block size."""
    rng = np.random.default_rng(7)
    waves = torch.from_numpy(np.stack([coloured_noise(rng, 3 * 44100, dc=0.02) for _ in range(3)]))
    c = np.exp(np.sin(np.linspace(0, 9, 1025)))
    extractor = LogMelExtractor(**PAPER, coefficients={"a": np.ones(1025), "b": c})
    index = torch.tensor([1, 0, 1])
    batch = extractor(waves, index)
    singles = torch.cat([extractor(waves[i : i + 1], index[i : i + 1]) for i in range(3)])
    assert torch.equal(batch, singles)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = extractor(waves, index)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # the pool restores the caller's setting
    assert torch.equal(batch, serial)
    # The batched (accelerator) formulation gives the same numbers to float32 rounding.
    torch.testing.assert_close(extractor._forward_batched(waves, index), batch, rtol=1e-4, atol=1e-4)
    # stft_magnitude is per clip too: a clip alone equals the clip inside a batch.
    mag = stft_magnitude(waves, n_fft=2048, hop_length=512, remove_dc=True)
    assert torch.equal(mag[1:2], stft_magnitude(waves[1:2], n_fft=2048, hop_length=512, remove_dc=True))


def _resume_fixture(tmp_path):
    rng = np.random.default_rng(8)
    spec = [(f"park-lyon-{i}-0", d, "train") for i in range(3) for d in "abc"] + [("bus-oslo-9-0", "a", "train")]
    manifest, audio = write_dataset(tmp_path, rng, spec, 4000)  # 10 clips
    n_freqs = SMALL["n_fft"] // 2 + 1
    extractor = LogMelExtractor(**SMALL, coefficients={d: rng.uniform(0.5, 2.0, n_freqs) for d in "abc"})
    stats = {"mean": rng.normal(-3, 1, 32), "std": rng.uniform(0.5, 2, 32), "n_frames": 1, "n_files": 1}
    return manifest, audio, extractor, stats


class _Recorder:
    """Wraps feature_cache._write_shard / features.read_wave: records shard row ranges and file reads; can
    fail after k shards."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.shards: list[tuple[int, int]] = []
        self.reads: list[str] = []
        write, read = feature_cache_module._write_shard, features_module.read_wave

        def write_shard(folder, start, feats16):
            if fail_after is not None and len(self.shards) == fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.shards.append((start, start + len(feats16)))
            return write(folder, start, feats16)

        def read_wave(path, expected_length=None):
            self.reads.append(Path(path).name)
            return read(path, expected_length)

        monkeypatch.setattr(feature_cache_module, "_write_shard", write_shard)
        monkeypatch.setattr(features_module, "read_wave", read_wave)


def _killed_after(monkeypatch, shards: int, *args, **kwargs) -> _Recorder:
    """build_feature_cache(*args, **kwargs) killed (KeyboardInterrupt) after `shards` shards were written."""
    with monkeypatch.context() as m:
        killed = _Recorder(m, fail_after=shards)
        with pytest.raises(KeyboardInterrupt):
            build_feature_cache(*args, **kwargs)
    return killed


@pytest.fixture
def in_a_workflow_dir(tmp_path, monkeypatch):
    """Run from a workflow directory (one with Snakemake's .snakemake/), as every job does."""
    (tmp_path / ".snakemake").mkdir()
    monkeypatch.chdir(tmp_path)


def test_feature_cache_resumes_after_a_kill_and_recomputes_only_missing_shards(tmp_path, monkeypatch,
                                                                              in_a_workflow_dir):
    manifest, audio, extractor, stats = _resume_fixture(tmp_path)
    # Reference: one uninterrupted run with other batch/shard sizes (the bytes must not depend on them).
    ref = build_feature_cache(manifest, "train", audio, extractor, stats, tmp_path / "ref" / "train.npy",
                              tmp_path / "ref" / "train.csv", batch_size=3, shard_batches=5, progress=False)
    out, csv = tmp_path / "c" / "train.npy", tmp_path / "c" / "train.csv"
    kw = dict(batch_size=2, shard_batches=1, progress=False)  # shards of 2 rows: 0-2, 2-4, ..., 8-10

    killed = _killed_after(monkeypatch, 2, manifest, "train", audio, extractor, stats, out, csv, **kw)
    assert killed.shards == [(0, 2), (2, 4)]
    assert not out.exists() and not csv.exists()
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]  # nothing where DVC tracks the output
    parts = parts_root(out)
    assert parts.parent == tmp_path / ".snakemake" / "heatedasc" / "scratch"
    (key_dir,) = parts.iterdir()
    assert sorted(p.name.split(".")[0] for p in key_dir.iterdir()) == ["rows-00000000-00000002",
                                                                      "rows-00000002-00000004"]

    with monkeypatch.context() as m:
        rerun = _Recorder(m)
        info = build_feature_cache(manifest, "train", audio, extractor, stats, out, csv, **kw)
    assert rerun.shards == [(4, 6), (6, 8), (8, 10)]
    names = [n.split("/")[1] for n in manifest["filename"]]
    assert sorted(set(rerun.reads) - {names[0]}) == sorted(names[4:])  # rows 0-3 never read again
    assert out.read_bytes() == (tmp_path / "ref" / "train.npy").read_bytes()
    assert info["sha256"] == ref["sha256"] and info["shape"] == ref["shape"]
    assert not parts.exists()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["train.csv", "train.npy"]


def test_corrupt_shard_is_recomputed_and_stale_config_shards_are_not_reused(tmp_path, monkeypatch, in_a_workflow_dir):
    manifest, audio, extractor, stats = _resume_fixture(tmp_path)
    ref = build_feature_cache(manifest, "train", audio, extractor, stats, tmp_path / "ref" / "train.npy",
                              tmp_path / "ref" / "train.csv", batch_size=2, progress=False)
    out, csv = tmp_path / "c" / "train.npy", tmp_path / "c" / "train.csv"
    kw = dict(batch_size=2, shard_batches=1, progress=False)
    _killed_after(monkeypatch, 4, manifest, "train", audio, extractor, stats, out, csv, **kw)
    (key_dir,) = parts_root(out).iterdir()
    shards = sorted(key_dir.glob("rows-*.npy"))
    assert len(shards) == 4
    # Shard 2-4: flip payload bytes (header intact); shard 4-6: truncated; a leftover temp file too.
    data = bytearray(shards[1].read_bytes())
    data[-8:] = bytes(8)
    shards[1].write_bytes(bytes(data))
    shards[2].write_bytes(shards[2].read_bytes()[:200])
    (key_dir / ".tmp-rows-00000008-1.npy").write_bytes(b"partial")

    with monkeypatch.context() as m:
        rerun = _Recorder(m)
        info = build_feature_cache(manifest, "train", audio, extractor, stats, out, csv, **kw)
    assert rerun.shards == [(2, 4), (4, 6), (8, 10)]
    assert info["sha256"] == ref["sha256"]
    assert out.read_bytes() == (tmp_path / "ref" / "train.npy").read_bytes()

    # Shards left by a different configuration (other stats) are never used: everything is recomputed.
    out.unlink()
    _killed_after(monkeypatch, 3, manifest, "train", audio, extractor, stats, out, csv, **kw)
    other = dict(stats, mean=stats["mean"] + 0.5)
    with monkeypatch.context() as m:
        rerun = _Recorder(m)
        info = build_feature_cache(manifest, "train", audio, extractor, other, out, csv, **kw)
    assert rerun.shards == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert info["sha256"] != ref["sha256"]
    # Likewise a changed manifest row (another device => another filterbank) changes the key.
    changed = manifest.copy()
    changed.loc[0, "device"] = "b"
    assert cache_key(changed[changed.split == "train"].reset_index(drop=True), extractor,
                     stats, 4000) != cache_key(
        manifest[manifest.split == "train"].reset_index(drop=True), extractor, stats, 4000)


def test_shards_of_other_audio_are_not_reused(tmp_path, monkeypatch, in_a_workflow_dir):
    """Same manifest, stats and settings, but one clip's content changed after a kill: every shard is recomputed
    (the shard key holds the audio folder's content)."""
    manifest, audio, extractor, stats = _resume_fixture(tmp_path)
    out, csv = tmp_path / "c" / "train.npy", tmp_path / "c" / "train.csv"
    kw = dict(batch_size=2, shard_batches=1, progress=False)
    _killed_after(monkeypatch, 3, manifest, "train", audio, extractor, stats, out, csv, **kw)
    name = manifest["filename"].iloc[0].split("/")[1]
    wave, sr = sf.read(audio / name, dtype="float32")
    sf.write(audio / name, 0.5 * wave, sr, subtype="FLOAT")
    with monkeypatch.context() as m:
        rerun = _Recorder(m)
        build_feature_cache(manifest, "train", audio, extractor, stats, out, csv, **kw)
    assert rerun.shards == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_make_extractor_folds_the_files_coefficients_for_the_asked_devices_on_the_cpu(tmp_path):
    from heatedasc.correction import save_coefficients
    from heatedasc.dsp import mel_filterbank
    from heatedasc.features import make_extractor

    n_freqs = SMALL["n_fft"] // 2 + 1
    c = {"a": np.ones(n_freqs), "b": np.linspace(0.5, 2.0, n_freqs), "c": np.full(n_freqs, 3.0)}
    save_coefficients(tmp_path / "ref_a.npz", c, correction="ref_a", reference_devices=["a"],
                      estimator="ratio_of_means", files=["x"], sample_rate=SMALL["sample_rate"], n_fft=SMALL["n_fft"])
    extractor = make_extractor(tmp_path / "ref_a.npz", devices=("c", "b"), **SMALL)  # device: the CPU by default
    assert extractor.devices == ("c", "b") and extractor.filterbanks.device.type == "cpu"
    mel = mel_filterbank(SMALL["sample_rate"], SMALL["n_fft"], SMALL["n_mels"], SMALL["f_min"], SMALL["f_max"],
                         dtype=torch.float64)
    for i, d in enumerate(("c", "b")):  # diag(c_d) · M, rounded to float32 once
        torch.testing.assert_close(extractor.filterbanks[i], (torch.from_numpy(c[d])[:, None] * mel).float(),
                                   rtol=0, atol=0)


def test_a_cache_refuses_bad_arguments_by_name_before_any_work(tmp_path):
    rng = np.random.default_rng(8)
    manifest, audio = write_dataset(tmp_path, rng, [("bus-rome-1-0", d, "train") for d in "ab"], 4000)
    extractor = LogMelExtractor(**SMALL)
    good = {"mean": np.zeros(32), "std": np.ones(32)}
    out, index = tmp_path / "out" / "train.npy", tmp_path / "out" / "train.csv"

    def build(m=manifest, split="train", stats=good, batch_size=1, **kw):
        return build_feature_cache(m, split, audio, extractor, stats, out, index, batch_size=batch_size,
                                   progress=False, **kw)

    cases = [
        (dict(split="evaluate"), "manifest has no rows with split 'evaluate'"),
        (dict(m=manifest.drop(columns=["identifier", "group"])),
         "manifest lacks columns ['identifier', 'group'] needed for the cache index"),
        (dict(m=manifest.drop(columns=["scene_label"])), "manifest lacks columns ['scene_label'] needed for the cache index"),
        (dict(m=manifest.drop(columns=["filename"])), "manifest lacks columns ['filename'] needed for the cache index"),
        (dict(batch_size=0), f"batch_size and shard_batches must be >= 1, got 0, {SHARD_BATCHES}"),
        (dict(shard_batches=0), "batch_size and shard_batches must be >= 1, got 1, 0"),
        (dict(stats={"mean": np.zeros(32), "std": np.ones(31)}), "stats have shapes (32,)/(31,), expected (32,)"),
        (dict(stats={"mean": np.zeros(31), "std": np.ones(32)}), "stats have shapes (31,)/(32,), expected (32,)"),
        (dict(stats={"mean": np.zeros(32), "std": np.r_[np.ones(31), 0.0]}),
         "stats contain a non-positive std; cannot standardise"),
        (dict(stats={"mean": np.zeros(32), "std": np.r_[np.ones(31), np.nan]}),
         "stats contain a non-positive std; cannot standardise"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            build(**kwargs)
        assert str(err.value) == message
        assert not out.parent.exists()
    info = build(m=manifest.iloc[:1])  # a single row is a cache too
    assert info == {"split": "train", "n_files": 1, "shape": [1, 32, 4000 // 128 + 1], "dtype": "float16",
                    "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "npy": str(out), "index_csv": str(index)}


def test_a_cache_standardises_with_the_float64_stats_rounded_once(tmp_path):
    """(x − mean)·(1/std) in float32 from float64 statistics: a float32 std inverted in float32 would round
    otherwise, and the cache records float16 of exactly this."""
    rng = np.random.default_rng(9)
    manifest, audio = write_dataset(tmp_path, rng, [("bus-rome-1-0", "a", "train")], 4000)
    extractor = LogMelExtractor(**SMALL)
    stats = {"mean": rng.normal(0, 3, 32), "std": rng.uniform(0.3, 3, 32)}
    build_feature_cache(manifest, "train", audio, extractor, stats, tmp_path / "t.npy", tmp_path / "t.csv",
                        batch_size=1, progress=False)
    wave = torch.from_numpy(sf.read(audio / "bus-rome-1-0-a.wav", dtype="float32")[0])[None]
    feats = extractor(wave, extractor.device_indices(["a"]))[0].numpy()
    want = ((feats - stats["mean"].astype(np.float32)[:, None]) * (1.0 / stats["std"]).astype(np.float32)[:, None])
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy")[0], want.astype(np.float16))
    single = {k: v.astype(np.float32) for k, v in stats.items()}  # float32 stats: inverted in float64 all the same
    build_feature_cache(manifest, "train", audio, extractor, single, tmp_path / "s.npy", tmp_path / "s.csv",
                        batch_size=1, progress=False)
    inv = (1.0 / single["std"].astype(np.float64)).astype(np.float32)[:, None]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy")[0],
                                  ((feats - single["mean"][:, None]) * inv).astype(np.float16))


def test_an_accelerator_extractor_gets_each_batch_whole_in_one_call(tmp_path, monkeypatch):
    """log_mel_files off the CPU: the pool reads a batch's files, the extractor takes them in one call with their
    device indices (a stand-in extractor records the calls; the numbers are test_accelerator_path_equals_the_cpu_path's)."""
    from types import SimpleNamespace

    from heatedasc.features import log_mel_files

    calls = []

    class Recorder:
        n_mels = 2
        filterbanks = SimpleNamespace(device=SimpleNamespace(type="cuda"))

        def n_frames(self, n):
            return n // 10

        def __call__(self, waves, index):
            calls.append((waves.numpy().copy(), index.tolist()))
            return torch.ones(len(waves), 2, 3) * waves[:, :1, None]

        def clip_log_mel(self, *a, **k):
            raise AssertionError("the per-clip CPU path ran for an accelerator extractor")

    files = [tmp_path / f"{i}.wav" for i in range(5)]
    load = lambda p: np.full(30, float(p.stem), dtype=np.float32)  # noqa: E731
    out = list(log_mel_files(files, [2, 0, 1, 1, 0], Recorder(), batch_size=2, load=load, n_samples=30))
    assert [s for s, _ in out] == [0, 2, 4]
    assert [idx for _, idx in calls] == [[2, 0], [1, 1], [0]]
    assert [w[:, 0].tolist() for w, _ in calls] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    np.testing.assert_array_equal(np.concatenate([f for _, f in out])[:, 0, 0], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="^batch_size must be >= 1, got 0$"):
        next(log_mel_files(files, [0] * 5, Recorder(), batch_size=0, load=load, n_samples=30))


def test_a_cpu_extractor_computes_clip_by_clip_never_batched(tmp_path, monkeypatch):
    from heatedasc.features import log_mel_files

    extractor = LogMelExtractor(**SMALL)
    monkeypatch.setattr(LogMelExtractor, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("batched")))
    rng = np.random.default_rng(10)
    waves = {f"{i}": rng.standard_normal(4000).astype(np.float32) for i in range(3)}
    out = list(log_mel_files([tmp_path / f"{i}.wav" for i in range(3)], [0, 1, 2], extractor, batch_size=2,
                             load=lambda p: waves[p.stem], n_samples=4000))
    assert [s for s, _ in out] == [0, 2] and out[0][1].shape == (2, 32, 4000 // 128 + 1)


def test_extractor_settings_name_everything_that_shapes_its_output():
    extractor = LogMelExtractor(**SMALL, devices=("b", "a"))
    assert extractor.settings() == {**{k: SMALL[k] for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min",
                                                            "f_max", "log_offset", "remove_dc")},
                                    "devices": ["b", "a"]}
    assert extractor.device_indices(["a", "a", "b"]).dtype == torch.long


def test_the_extractor_names_bad_coefficients_indices_and_shapes():
    n_freqs = SMALL["n_fft"] // 2 + 1
    with pytest.raises(ValueError, match=rf"^coefficients for device 'b' have shape \(5,\), expected \({n_freqs},\)$"):
        LogMelExtractor(**SMALL, coefficients={"a": np.ones(n_freqs), "b": np.ones(5)})
    with pytest.raises(ValueError, match="^coefficients for device 'a' contain non-finite values$"):
        LogMelExtractor(**SMALL, coefficients={"a": np.r_[np.ones(n_freqs - 1), np.inf]})
    none = LogMelExtractor(**SMALL, coefficients={"x": np.ones(n_freqs)})  # no asked device has coefficients
    assert none.devices == () and tuple(none.filterbanks.shape) == (0, n_freqs, SMALL["n_mels"])
    extractor = LogMelExtractor(**SMALL, devices=("a", "b"))
    waves = torch.zeros(2, 4000)
    with pytest.raises(ValueError, match=r"^2 waveforms but 3 device indices$"):
        extractor(waves, torch.tensor([0, 1, 1]))
    for bad in ([0, 2], [-1, 0]):
        with pytest.raises(ValueError, match=r"^device_index out of range for devices \['a', 'b'\]$"):
            extractor(waves, torch.tensor(bad))
    with pytest.raises(ValueError, match=r"^expected waves of shape \[B, S\], got \(2, 1, 4000\)$"):
        extractor(torch.zeros(2, 1, 4000), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="^batch_size must be >= 1, got 0$"):
        next(iter_log_mel(pd.DataFrame({"filename": ["audio/x-a.wav"], "device": ["a"]}), ".", extractor,
                          batch_size=0, progress=False, desc=""))


def test_one_clip_alone_is_its_row_of_the_batch_in_float32_whatever_the_input_dtype():
    rng = np.random.default_rng(11)
    extractor = LogMelExtractor(**SMALL, coefficients={d: rng.uniform(0.5, 2, SMALL["n_fft"] // 2 + 1) for d in "abc"})
    waves = rng.standard_normal((2, 4000))
    batch = extractor(torch.from_numpy(waves).float(), torch.tensor([2, 1]))
    assert batch.dtype == torch.float32 and batch.shape == (2, 32, 4000 // 128 + 1)
    assert torch.equal(extractor(torch.from_numpy(waves), torch.tensor([2, 1])), batch)  # float64 in: same
    one = extractor.clip_log_mel(torch.from_numpy(waves[1]), 1)  # no out: it makes its own
    assert one.dtype == torch.float32 and torch.equal(one, batch[1])


def test_a_cache_names_an_off_length_clip_in_any_shard(tmp_path, in_a_workflow_dir):
    rng = np.random.default_rng(12)
    manifest, audio = write_dataset(tmp_path, rng, [(f"bus-rome-{i}-0", "a", "train") for i in range(4)], 4000)
    for i in (2, 3):  # the whole second shard is shorter: only the first clip's length tells
        sf.write(audio / f"bus-rome-{i}-0-a.wav", np.zeros(3000, dtype=np.float32), SMALL["sample_rate"])
    with pytest.raises(ValueError, match=r"bus-rome-2-0-a\.wav: 3000 samples, but other files have 4000"):
        build_feature_cache(manifest, "train", audio, LogMelExtractor(**SMALL), {"mean": np.zeros(32),
                            "std": np.ones(32)}, tmp_path / "t.npy", tmp_path / "t.csv", batch_size=2,
                            shard_batches=1, progress=False)
