"""Prepare stage: resample/downmix to fixed-length mono, reporting, and all-or-nothing failure."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from heatedasc.audio import read_audio, to_mono_fixed, write_wav
from heatedasc.prepare import prepare_dataset
from heatedasc.synth import generate_dataset
from heatedasc.tau import DatasetError

torch.set_num_threads(1)

SR = 44100
N = 8820  # 0.2 s clips keep the test fast


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep") / "tau"
    generate_dataset(
        root, seed=4, clip_seconds=N / SR, sample_rate=SR, train_parallel_per_scene=1,
        train_a_only_per_scene=1, evaluate_parallel_per_scene=1, evaluate_a_only_per_scene=0,
        device_a_48k_stereo=True, cities=["lisbon", "vienna"], device_strength_db=12.0, progress=False,
    )
    return root


@pytest.fixture
def root(pristine, tmp_path):
    copy = tmp_path / "tau"
    shutil.copytree(pristine, copy)
    return copy


def run(root, out, **overrides):
    kwargs = dict(sample_rate=SR, duration_s=N / SR, length_tolerance=64, devices=("a", "b", "c"), progress=False)
    kwargs.update(overrides)
    return prepare_dataset(root, out / "audio", out / "manifest.csv", out / "summary.csv", out / "report.json", **kwargs)


def test_to_mono_fixed_downmixes_resamples_pads_and_trims_naming_each_change():
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 4800)).astype(np.float32)
    mono, changes = to_mono_fixed(stereo, 48000, target_sr=44100, n_samples=4410)
    assert mono.dtype == np.float32 and mono.shape == (4410,)
    assert changes == ["downmix 2ch", "resample 48000->44100"]
    expected = AF.resample(torch.from_numpy(stereo.mean(0)), 48000, 44100).numpy()
    np.testing.assert_allclose(mono, expected[:4410], atol=1e-6)

    short, changes = to_mono_fixed(np.ones((1, 100), np.float32), 44100, target_sr=44100, n_samples=112)
    assert changes == ["pad 12 samples"]
    assert short[:100].tolist() == [1.0] * 100 and short[100:].tolist() == [0.0] * 12
    long, changes = to_mono_fixed(np.arange(130, dtype=np.float32), 44100, target_sr=44100, n_samples=112)
    assert changes == ["trim 18 samples"]
    assert long.tolist() == list(range(112))


def test_a_written_wav_is_24_bit_pcm_reads_back_and_a_bad_file_is_named(tmp_path):
    wave = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    write_wav(tmp_path / "x.wav", wave, SR)
    assert sf.info(str(tmp_path / "x.wav")).subtype == "PCM_24"
    back, sr = read_audio(tmp_path / "x.wav")
    assert sr == SR and back.shape == (1, 1000)
    np.testing.assert_allclose(back[0], wave, atol=2.0 ** -22)
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="bad.wav"):
        read_audio(tmp_path / "bad.wav")


def test_resample_downmix_to_exact_length(root, tmp_path):
    out = tmp_path / "out"
    df = run(root, out)
    assert list(df.columns) == ["filename", "scene_label", "label", "device", "city", "location", "segment",
                                "identifier", "group", "split", "source_label", "raw_md5"]
    manifest = pd.read_csv(out / "manifest.csv", dtype={"location": str, "segment": str})
    assert len(manifest) == 70 and manifest["split"].isin(["train", "evaluate"]).all()
    assert manifest["raw_md5"].iloc[0] == hashlib.md5((root / manifest["filename"].iloc[0]).read_bytes()).hexdigest()
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(manifest["filename"].str[len("audio/"):])
    for name in manifest["filename"][:6]:
        info = sf.info(str(out / "audio" / name[len("audio/"):]))
        assert (info.samplerate, info.channels, info.frames) == (SR, 1, N)
    # an a file: 48 kHz stereo in -> mean of channels resampled with torchaudio
    a_name = manifest.loc[manifest["device"] == "a", "filename"].iloc[0]
    raw, raw_sr = sf.read(str(root / a_name), dtype="float32", always_2d=True)
    assert (raw_sr, raw.shape[1]) == (48000, 2)
    expected = AF.resample(torch.from_numpy(raw.mean(1)), 48000, SR).numpy()[:N]
    prepared, _ = sf.read(str(out / "audio" / a_name[len("audio/"):]), dtype="float32")
    np.testing.assert_allclose(prepared, expected, atol=1e-5)

    report = json.loads((out / "report.json").read_text())
    n_a = int((manifest["device"] == "a").sum())
    assert report["n_resampled"] == report["n_downmixed"] == n_a == 30
    assert sorted(report["files"]["resampled"]) == sorted(manifest.loc[manifest["device"] == "a", "filename"])
    assert report["n_padded"] == report["n_trimmed"] == report["n_off_length"] == 0
    assert report["n_unused"] == 0
    assert report["counts"] == {"train": {"a": 20, "b": 10, "c": 10}, "evaluate": {"a": 10, "b": 10, "c": 10}}
    summary = pd.read_csv(out / "summary.csv")
    assert summary["count"].sum() == 70
    assert sorted(p.name for p in out.iterdir()) == ["audio", "manifest.csv", "report.json", "summary.csv"]


def test_pad_trim_offlength_and_unused_reported(root, tmp_path):
    meta = pd.read_csv(root / "meta.csv", sep="\t")
    b_files = meta.loc[meta["source_label"] == "b", "filename"].tolist()
    short, slightly_long = b_files[0], b_files[1]
    wave, _ = sf.read(str(root / short))
    sf.write(str(root / short), wave[: N - 100], SR, subtype="PCM_24")
    wave, _ = sf.read(str(root / slightly_long))
    sf.write(str(root / slightly_long), np.concatenate([wave, wave[:30]]), SR, subtype="PCM_24")
    # a meta row in no fold: counted as unused, not converted
    shutil.copy(root / short, root / "audio" / "bus-lisbon-0-77-a.wav")
    with open(root / "meta.csv", "a") as fh:
        fh.write("audio/bus-lisbon-0-77-a.wav\tbus\tlisbon-0\ta\n")

    out = tmp_path / "out"
    (out / "audio").mkdir(parents=True)
    (out / "audio" / "stale.wav").write_bytes(b"old run")  # an earlier output folder is replaced whole
    df = run(root, out)
    assert not (out / "audio" / "stale.wav").exists()
    assert sorted(p.name for p in out.iterdir()) == ["audio", "manifest.csv", "report.json", "summary.csv"]
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["padded"] == [short]
    assert report["files"]["trimmed"] == [slightly_long]
    assert report["files"]["off_length"] == [short]  # 30 extra samples are within the tolerance of 64
    assert report["off_length_raw"][short]["samples"] == N - 100
    assert report["n_unused"] == 1
    assert "audio/bus-lisbon-0-77-a.wav" not in set(df["filename"])
    padded, _ = sf.read(str(out / "audio" / short[len("audio/"):]))
    assert padded.shape == (N,) and np.all(padded[N - 100:] == 0)


def _assert_nothing_written(out):
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_unreadable_wav_fails_before_any_output(root, tmp_path):
    meta = pd.read_csv(root / "meta.csv", sep="\t")
    bad = meta["filename"].iloc[-1]
    (root / bad).write_bytes(np.random.default_rng(0).bytes(5000))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError) as err:
        run(root, out)
    assert str(root / bad) in str(err.value) and "unreadable" in str(err.value)
    _assert_nothing_written(out)


@pytest.mark.parametrize("problem, message", [
    ("nan", "audio contains NaN or infinite samples"),
    ("inf", "audio contains NaN or infinite samples"),
    ("silent", "audio is silent (all samples are zero)"),
    ("constant", "audio is constant (0.25 in every sample): silent after DC removal"),
])
def test_nan_inf_silent_or_constant_file_leaves_nothing(root, tmp_path, problem, message):
    meta = pd.read_csv(root / "meta.csv", sep="\t")
    bad = meta["filename"].iloc[-1]  # the last file: everything before it was already converted
    wave = np.random.default_rng(1).standard_normal(N) * 0.1
    if problem in ("nan", "inf"):
        wave[100] = np.nan if problem == "nan" else -np.inf
        sf.write(str(root / bad), wave, SR, subtype="FLOAT")
    else:
        sf.write(str(root / bad), np.full(N, 0.0 if problem == "silent" else 0.25), SR, subtype="PCM_24")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError) as err:
        run(root, out)
    assert f"{root / bad}: {message}" in str(err.value)
    _assert_nothing_written(out)


def test_wrong_sample_rate_mono_and_clipping_are_fixed_and_counted(root, tmp_path, caplog):
    meta = pd.read_csv(root / "meta.csv", sep="\t")
    b_files = meta.loc[meta["source_label"] == "b", "filename"].tolist()
    slow, loud = b_files[0], b_files[1]
    rng = np.random.default_rng(5)
    wave16k = (0.1 * rng.standard_normal(int(N * 16000 / SR))).astype(np.float32)
    sf.write(str(root / slow), wave16k, 16000, subtype="PCM_16")  # mono, but 16 kHz
    hot = np.clip(rng.standard_normal(N), -3, 3).astype(np.float32)  # a float wav beyond full scale
    sf.write(str(root / loud), hot, SR, subtype="FLOAT")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="heatedasc.prepare"):
        run(root, out)
    report = json.loads((out / "report.json").read_text())
    assert slow in report["files"]["resampled"] and slow not in report["files"]["downmixed"]
    written, sr = sf.read(str(out / "audio" / slow[len("audio/"):]), dtype="float32")
    expected = AF.resample(torch.from_numpy(sf.read(str(root / slow), dtype="float32")[0]), 16000, SR).numpy()
    assert sr == SR and written.shape == (N,)
    np.testing.assert_allclose(written, np.pad(expected, (0, max(0, N - len(expected))))[:N], atol=1e-5)
    assert report["files"]["clipped"] == [loud] and report["n_clipped"] == 1
    assert report["clipped_samples"][loud] == int(np.count_nonzero(np.abs(hot) >= 1.0))
    assert "clipped: 1 file(s)" in caplog.text and "resampled: 31 file(s)" in caplog.text


def _truncated_copy(root, name, keep_bytes):
    """Replace `name` under `root` by its first `keep_bytes` bytes, as a copy cut off mid-transfer would be."""
    path = root / name
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    return path


def _a_file(root):
    return pd.read_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t")["filename"].iloc[0]


def test_a_200_byte_copy_of_a_10s_48k_stereo_file_stops_prepare_naming_it(tmp_path):
    root = tmp_path / "tau"
    generate_dataset(root, seed=5, clip_seconds=10.0, sample_rate=SR, train_parallel_per_scene=1,
                     train_a_only_per_scene=0, evaluate_parallel_per_scene=1, evaluate_a_only_per_scene=0,
                     device_a_48k_stereo=True, cities=["lisbon"], device_strength_db=12.0, progress=False)
    name = next(f for f in pd.read_csv(root / "meta.csv", sep="\t")["filename"] if f.endswith("-a.wav"))
    assert sf.info(str(root / name)).samplerate == 48000 and sf.info(str(root / name)).channels == 2
    path = _truncated_copy(root, name, 200)
    assert sf.read(str(path))[0].shape == (26, 2)  # libsndfile reads the 26 frames that are there, silently
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        run(root, out, duration_s=10.0)
    assert str(err.value) == (
        f"{path}: truncated: its header declares 480000 frames (10.000 s) but the file holds 26 (0.001 s) "
        "(set data.on_truncated: warn to zero-pad such files instead)"
    )
    assert not out.exists() or not any(out.rglob("*"))  # nothing half-written


def test_a_truncated_file_whose_rest_is_long_enough_is_still_an_error(root, tmp_path):
    name = _a_file(root)
    size = (root / name).stat().st_size
    path = _truncated_copy(root, name, size - 300)  # most of the clip is there, but not all the header promised
    with pytest.raises(DatasetError, match=r"truncated: its header declares \d+ frames .* but the file holds \d+") as err:
        run(root, tmp_path / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_a_complete_but_short_file_under_half_the_duration_is_an_error(root, tmp_path):
    name = _a_file(root)
    wave, sr = read_audio(root / name)
    write_wav(root / name, wave[:, : wave.shape[1] // 3], sr)  # a whole, valid wav of a third of the length
    with pytest.raises(DatasetError) as err:
        run(root, tmp_path / "out")
    assert str(err.value).startswith(f"{root / name}: holds only ")
    assert "less than half of data.duration_s" in str(err.value)


def test_on_truncated_warn_zero_pads_lists_and_logs_the_file(root, tmp_path, caplog):
    name = _a_file(root)
    _truncated_copy(root, name, 200)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="heatedasc.prepare"):
        manifest = run(root, out, on_truncated="warn")
    assert name in set(manifest["filename"])
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["truncated"] == [name] and report["n_truncated"] == 1
    assert "truncated: its header declares" in report["truncated_details"][name]["problem"]
    assert name in report["files"]["padded"]
    prepared, _ = read_audio(out / "audio" / name.split("/")[-1])
    assert prepared.shape == (1, N)
    assert any("zero-padded (data.on_truncated: warn)" in r.message for r in caplog.records)


def test_on_truncated_policy_must_be_known(root, tmp_path):
    with pytest.raises(ValueError, match="data.on_truncated must be one of"):
        run(root, tmp_path / "out", on_truncated="ignore")
