"""Survivors of the mutation run (tools/mutants.py) that were real gaps, each killed by a check against an
independent reference: librosa's mel scale, per-device accuracies counted by hand, a zero-variance mel bin
that the standardisation must refuse, and the batch sizes the mean spectra accept."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from heatedasc import dsp, feature_stats
from heatedasc.correction import compute_mean_spectra
from heatedasc.metrics import device_accuracies
from heatedasc.tau import DEVICES

librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize("hz", [0.0, 133.3, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 22050.0])
def test_the_mel_scale_is_librosas_slaney_scale_both_ways(hz):
    mel = dsp._hz_to_mel(hz)
    assert mel == pytest.approx(float(librosa.hz_to_mel(hz, htk=False)), rel=1e-12, abs=1e-12)
    assert float(dsp._mel_to_hz(np.array([mel]))[0]) == pytest.approx(hz, rel=1e-12, abs=1e-9)


def test_device_accuracies_count_each_devices_rows_alone():
    devices = np.array(list("aaaabbbcc"))
    labels = np.zeros(9, dtype=int)
    pred = np.array([0, 0, 0, 1,  0, 1, 1,  1, 1])  # a: 3/4, b: 1/3, c: 0/2
    got = device_accuracies(pred, labels, devices)
    assert got["acc_a"] == 0.75 and got["acc_b"] == pytest.approx(1 / 3) and got["acc_c"] == 0.0
    assert got["avg_bc"] == pytest.approx(1 / 6) and got["overall"] == pytest.approx(4 / 9)
    none_of_c = device_accuracies(pred[:7], labels[:7], devices[:7])
    assert np.isnan(none_of_c["acc_c"]) and np.isnan(none_of_c["avg_bc"])
    empty = device_accuracies(pred[:0], labels[:0], devices[:0])
    assert all(np.isnan(v) for v in empty.values()) and set(empty) == {"acc_a", "acc_b", "acc_c", "avg_bc", "overall"}


class FlatExtractor:
    """Stands in for LogMelExtractor: the statistics only ask for n_mels and the devices."""
    n_mels, devices = 4, tuple(DEVICES)


def manifest(n: int) -> pd.DataFrame:
    return pd.DataFrame({"filename": [f"audio/x-{i}-a.wav" for i in range(n)], "device": ["a"] * n,
                         "split": ["train"] * n})


def test_feature_statistics_refuse_a_mel_bin_without_variance_naming_it(monkeypatch):
    rng = np.random.default_rng(0)

    def frames(rows, *args, **kwargs):
        for i in range(len(rows)):
            x = rng.standard_normal((1, 4, 10)).astype(np.float32)
            x[:, 2, :] = -3.0  # bin 2 is constant over every frame of every file
            yield i, x

    monkeypatch.setattr(feature_stats, "iter_log_mel", frames)
    with pytest.raises(ValueError, match=r"mel bins \[2\] have zero variance"):
        feature_stats.compute_feature_stats(manifest(3), ".", FlatExtractor(), batch_size=2, progress=False)


def test_feature_statistics_of_one_file_are_its_frames_mean_and_std(monkeypatch):
    x = np.random.default_rng(1).standard_normal((1, 4, 50))
    monkeypatch.setattr(feature_stats, "iter_log_mel", lambda rows, *a, **k: iter([(0, x)]))
    stats = feature_stats.compute_feature_stats(manifest(1), ".", FlatExtractor(), batch_size=1, progress=False)
    np.testing.assert_allclose(stats["mean"], x[0].mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], x[0].std(axis=1), rtol=1e-12)
    assert stats["n_frames"] == 50 and stats["n_files"] == 1


def test_mean_spectra_are_the_same_for_every_batch_size_down_to_one(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "audio").mkdir()
    rows = []
    for i in range(2):
        for d in DEVICES:
            sf.write(tmp_path / "audio" / f"bus-riga-{i}-0-{d}.wav", 0.1 * rng.standard_normal(3000), 16000,
                     subtype="FLOAT")
            rows.append({"filename": f"audio/bus-riga-{i}-0-{d}.wav", "scene_label": "bus", "device": d,
                         "split": "train", "group": f"bus-riga-{i}-0"})
    m = pd.DataFrame(rows)
    kw = dict(n_fft=256, hop_length=64, remove_dc=True, devices=DEVICES, progress=False)
    one = compute_mean_spectra(m, tmp_path / "audio", batch_size=1, **kw)
    four = compute_mean_spectra(m, tmp_path / "audio", batch_size=4, **kw)
    np.testing.assert_array_equal(one["spectra"], four["spectra"])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        compute_mean_spectra(m, tmp_path / "audio", batch_size=0, **kw)


def test_running_statistics_take_a_batch_of_one_frame_and_skip_an_empty_one():
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((1, 4, 1)), np.empty((0, 4, 5)), rng.standard_normal((2, 4, 3))]
    running = feature_stats.RunningMeanStd(4)
    for b in batches:
        running.update(b)
    flat = np.concatenate([b.transpose(1, 0, 2).reshape(4, -1) for b in batches], axis=1)
    assert running.count == 7
    np.testing.assert_allclose(running.mean, flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(running.std, flat.std(axis=1), rtol=1e-12)


def test_feature_statistics_name_at_most_ten_constant_bins_and_need_training_rows(monkeypatch):
    class Wide(FlatExtractor):
        n_mels = 12

    monkeypatch.setattr(feature_stats, "iter_log_mel", lambda rows, *a, **k: iter([(0, np.ones((2, 12, 5)))]))
    with pytest.raises(ValueError, match=r"^mel bins \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] have zero variance over the "
                                         r"training split; cannot standardise$"):
        feature_stats.compute_feature_stats(manifest(2), ".", Wide(), batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"^manifest has no rows with split 'train' to compute feature statistics "
                                         r"from$"):
        feature_stats.compute_feature_stats(manifest(2).assign(split="evaluate"), ".", Wide(), batch_size=2,
                                            progress=False)


def test_feature_statistics_files_are_float64_without_pickles(tmp_path):
    stats = {"mean": np.float32([1.5, 2.25]), "std": np.float32([0.5, 3.0]), "n_frames": 7, "n_files": 2}
    feature_stats.save_stats(tmp_path / "s.npz", stats)
    with np.load(tmp_path / "s.npz") as z:
        assert z["mean"].dtype == z["std"].dtype == np.float64
    loaded = feature_stats.load_stats(tmp_path / "s.npz")
    assert loaded["mean"].tolist() == [1.5, 2.25] and loaded["std"].tolist() == [0.5, 3.0]
    assert loaded["n_frames"] == 7 and loaded["n_files"] == 2
    np.savez(tmp_path / "short.npz", mean=np.zeros(2), std=np.ones(2))
    with pytest.raises(ValueError, match=r"short.npz: missing keys \['n_files', 'n_frames'\]$"):
        feature_stats.load_stats(tmp_path / "short.npz")
    np.savez(tmp_path / "pickled.npz", mean=np.zeros(2), std=np.asarray([1, 1], dtype=object), n_frames=1, n_files=1)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        feature_stats.load_stats(tmp_path / "pickled.npz")


def test_expected_calibration_error_with_five_bins_by_hand():
    from heatedasc.metrics import expected_calibration_error

    # top-class confidences 0.3, 0.5, 0.55, 0.9, 0.95; correct: yes, no, yes, yes, no
    probs = np.array([[0.3, 0.25, 0.25, 0.2], [0.5, 0.5 - 1e-9, 1e-9, 0.0], [0.2, 0.55, 0.25, 0.0],
                      [0.05, 0.05, 0.9, 0.0], [0.95, 0.05, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2, 1])
    # 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]: {0.3: 1/1}, {0.5, 0.55: 1/2}, {0.9, 0.95: 1/2}
    want = (1 * abs(1 - 0.3) + 2 * abs(0.5 - 0.525) + 2 * abs(0.5 - 0.925)) / 5
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(want, rel=1e-12)
    assert expected_calibration_error(probs, labels) != pytest.approx(want, rel=1e-6)  # the default is 15 bins
