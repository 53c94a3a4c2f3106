"""The synthetic TAU-layout generator: layout, parallel groups, determinism, device mismatch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from heatedasc.cli import main as cli_main
from heatedasc.synth import generate_dataset
from heatedasc.tau import DEVICES, SCENES, load_tau

CITIES = ["barcelona", "helsinki", "lisbon"]


def small_set(root, seed=0, **overrides):
    kwargs = dict(
        seed=seed,
        clip_seconds=1.0,
        sample_rate=44100,
        train_parallel_per_scene=2,
        train_a_only_per_scene=2,
        evaluate_parallel_per_scene=1,
        evaluate_a_only_per_scene=1,
        device_a_48k_stereo=False,
        cities=CITIES,
        device_strength_db=12.0,
        progress=False,
    )
    kwargs.update(overrides)
    return generate_dataset(root, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tau"
    summary = small_set(root)
    return root, summary


def read_tab(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_headers_and_separator_match_the_real_files(dataset):
    root, _ = dataset
    assert (root / "meta.csv").read_text().splitlines()[0] == "filename\tscene_label\tidentifier\tsource_label"
    setup = root / "evaluation_setup"
    assert (setup / "fold1_train.csv").read_text().splitlines()[0] == "filename\tscene_label"
    assert (setup / "fold1_evaluate.csv").read_text().splitlines()[0] == "filename\tscene_label"
    assert (setup / "fold1_test.csv").read_text().splitlines()[0] == "filename"
    meta = read_tab(root / "meta.csv")
    assert meta["filename"].str.match(r"^audio/[a-z_]+-[a-z]+-\d+-\d+-[abc]\.wav$").all()
    assert (meta["identifier"] == meta["filename"].str.split("-").str[1] + "-" + meta["filename"].str.split("-").str[2]).all()
    assert (meta["source_label"] == meta["filename"].str[-5]).all()
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(meta["filename"].str[len("audio/"):])
    # the test list is the evaluate list without labels
    assert list(read_tab(setup / "fold1_test.csv")["filename"]) == list(read_tab(setup / "fold1_evaluate.csv")["filename"])


def test_device_counts_per_split(dataset):
    root, summary = dataset
    df = load_tau(root)
    counts = df.groupby(["split", "device"]).size().to_dict()
    # train: 10 scenes x (2 parallel + 2 A-only) a files, 10 x 2 b and c; evaluate: 10 x (1 + 1) a, 10 x 1 b/c
    assert counts == {
        ("train", "a"): 40, ("train", "b"): 20, ("train", "c"): 20,
        ("evaluate", "a"): 20, ("evaluate", "b"): 10, ("evaluate", "c"): 10,
    }
    assert summary["counts"] == {"train": {"a": 40, "b": 20, "c": 20}, "evaluate": {"a": 20, "b": 10, "c": 10}}
    assert set(df["scene_label"]) == set(SCENES)
    assert (df["split"] != "unused").all()


def test_parallel_groups_complete_and_locations_disjoint(dataset):
    root, _ = dataset
    df = load_tau(root)
    per_group = df.groupby("group")["device"].apply(lambda s: "".join(sorted(s)))
    assert set(per_group) == {"a", "abc"}
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert (per_group == "abc").sum() == 10 * (2 + 1)
    train_ids = set(df.loc[df["split"] == "train", "identifier"])
    eval_ids = set(df.loc[df["split"] == "evaluate", "identifier"])
    assert train_ids and eval_ids and not (train_ids & eval_ids)


def test_parallel_files_record_the_same_moment(dataset):
    root, _ = dataset
    df = load_tau(root)
    groups = df[df["device"] == "b"]["group"].tolist()
    same, other = [], []
    for g, g_other in zip(groups, groups[1:] + groups[:1]):
        a, _ = sf.read(root / "audio" / f"{g}-a.wav")
        c, _ = sf.read(root / "audio" / f"{g}-c.wav")
        c_other, _ = sf.read(root / "audio" / f"{g_other}-c.wav")
        same.append(abs(np.corrcoef(a, c)[0, 1]))
        other.append(abs(np.corrcoef(a, c_other)[0, 1]))
    assert np.median(same) > 0.3
    assert np.median(other) < 0.1


def test_audio_format(dataset):
    root, _ = dataset
    files = sorted((root / "audio").glob("*.wav"))
    for path in files[:6]:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 44100, "PCM_24")
        wave, _ = sf.read(str(path))
        assert 0 < np.max(np.abs(wave)) <= 0.95 + 1e-6


def test_same_seed_identical_bytes_different_seed_differs(tmp_path, dataset):
    root, _ = dataset
    again = tmp_path / "again"
    small_set(again, seed=0)
    assert (again / "meta.csv").read_bytes() == (root / "meta.csv").read_bytes()
    name = read_tab(root / "meta.csv")["filename"].iloc[5]
    assert (again / name).read_bytes() == (root / name).read_bytes()

    other = tmp_path / "other"
    small_set(other, seed=1)
    names = set(read_tab(other / "meta.csv")["filename"]) & set(read_tab(root / "meta.csv")["filename"])
    name = sorted(names)[0]
    assert (other / name).read_bytes() != (root / name).read_bytes()
    # the old output is replaced atomically and no staging folder stays behind
    small_set(other, seed=0)
    assert (other / "meta.csv").read_bytes() == (root / "meta.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


def test_a_48k_stereo_option(tmp_path):
    root = tmp_path / "tau48"
    small_set(root, seed=2, device_a_48k_stereo=True, train_a_only_per_scene=0, evaluate_a_only_per_scene=0,
              train_parallel_per_scene=1, evaluate_parallel_per_scene=1)
    meta = read_tab(root / "meta.csv")
    for name, device in zip(meta["filename"][:9], meta["source_label"][:9]):
        info = sf.info(str(root / name))
        if device == "a":
            assert (info.samplerate, info.channels, info.frames) == (48000, 2, 48000)
        else:
            assert (info.samplerate, info.channels, info.frames) == (44100, 1, 44100)
        assert info.subtype == "PCM_24"


def test_cli_main_matches_function(tmp_path, dataset):
    root, _ = dataset
    out = tmp_path / "cli"
    rc = cli_main([
        "synth", "--root", str(out), "--seed", "0", "--clip-seconds", "1", "--sample-rate", "44100",
        "--train-parallel-per-scene", "2", "--train-a-only-per-scene", "2",
        "--evaluate-parallel-per-scene", "1", "--evaluate-a-only-per-scene", "1",
        "--cities", *CITIES, "--device-strength-db", "12", "--no-progress",
    ])
    assert rc == 0
    assert (out / "meta.csv").read_bytes() == (root / "meta.csv").read_bytes()


def test_bad_arguments_rejected(tmp_path):
    with pytest.raises(ValueError, match="cities"):
        small_set(tmp_path / "x", cities=["new-york"])
    with pytest.raises(ValueError, match="train_a_only_per_scene"):
        small_set(tmp_path / "x", train_a_only_per_scene=-1)
    assert not (tmp_path / "x").exists()


# ---- correction usefulness proxy -------------------------------------------------------------

def _stft_magnitude(path, n_fft=2048, hop=512):
    """|STFT| (frames x bins) with a periodic Hann window, centred with reflect padding, DC removed."""
    x, sr = sf.read(str(path), dtype="float64")
    x = x - x.mean()
    pad = np.pad(x, n_fft // 2, mode="reflect")
    idx = np.arange(0, pad.size - n_fft + 1, hop)[:, None] + np.arange(n_fft)
    return np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft + 1)[:-1], axis=1)), sr


def _band_log_mean(mag, sr, coefficient, n_fft=2048, n_bands=32):
    """Mean over frames of log band energies (log-spaced bands, a crude log-mel)."""
    mag = mag * coefficient
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = np.geomspace(100.0, 20000.0, n_bands + 1)
    bands = np.stack([mag[:, (freqs >= lo) & (freqs < hi)].mean(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    return np.log(bands + 1e-7).mean(axis=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_spectrum_correction_recovers_bc_accuracy(tmp_path, seed):
    root = tmp_path / "proxy"
    small_set(root, seed=seed, cities=["barcelona", "helsinki", "lisbon", "london", "lyon"],
              train_parallel_per_scene=6, train_a_only_per_scene=12,
              evaluate_parallel_per_scene=4, evaluate_a_only_per_scene=2)
    df = load_tau(root)
    stft = {f: _stft_magnitude(root / f) for f in df["filename"]}
    train = df[df["split"] == "train"]
    triplets = train[train.groupby("group")["device"].transform("count") == 3]
    # spectrum correction towards device a: c_d = mean a-spectrum / mean d-spectrum over the triplets
    device_mean = {
        d: np.mean([stft[f][0].mean(axis=0) for f in triplets.loc[triplets["device"] == d, "filename"]], axis=0)
        for d in DEVICES
    }
    coefficients = {d: device_mean["a"] / device_mean[d] for d in DEVICES}

    accuracy = {}
    for corrected in (False, True):
        def features(rows):
            return np.stack([
                _band_log_mean(*stft[f], coefficients[d] if corrected else 1.0)
                for f, d in zip(rows["filename"], rows["device"])
            ])
        train_a = train[train["device"] == "a"]
        x_train, y_train = features(train_a), train_a["label"].to_numpy()
        centroids = np.stack([x_train[y_train == k].mean(0) for k in range(len(SCENES))])
        evaluate = df[df["split"] == "evaluate"]
        for d in DEVICES:
            rows = evaluate[evaluate["device"] == d]
            pred = np.argmin(((features(rows)[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
            accuracy[corrected, d] = float((pred == rows["label"].to_numpy()).mean())
    raw_bc = (accuracy[False, "b"] + accuracy[False, "c"]) / 2
    corrected_bc = (accuracy[True, "b"] + accuracy[True, "c"]) / 2
    print(f"seed {seed}: {accuracy}")
    assert accuracy[False, "a"] >= 0.8
    assert corrected_bc >= raw_bc + 0.2
    assert corrected_bc >= 0.75
