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
