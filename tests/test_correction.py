"""Spectrum correction: triplet selection, both estimators against direct numpy, known gains, I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from heatedasc.correction import (
    coefficient_curves,
    compute_mean_spectra,
    estimate_coefficients,
    load_coefficients,
    load_mean_spectra,
    parallel_training_groups,
    plot_coefficients,
    save_coefficients,
    save_mean_spectra,
)
from heatedasc.tau import DatasetError

torch.set_num_threads(2)
DEVICES = ["a", "b", "c"]


def manifest_of(spec: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(group, device, split) rows -> a manifest per the shared contract."""
    rows = []
    for group, device, split in spec:
        scene, city, location, segment = group.split("-")
        rows.append(dict(filename=f"audio/{group}-{device}.wav", scene_label=scene, label=0, device=device,
                         city=city, location=location, segment=segment, identifier=f"{city}-{location}",
                         group=group, split=split, raw_md5="0" * 32))
    return pd.DataFrame(rows)


def random_spectra(rng: np.random.Generator, n_groups: int, n_freqs: int) -> dict:
    groups = [f"g{i}" for i in range(n_groups) for _ in DEVICES]
    devices = [d for _ in range(n_groups) for d in DEVICES]
    return {
        "filenames": np.asarray([f"audio/{g}-{d}.wav" for g, d in zip(groups, devices)]),
        "devices": np.asarray(devices),
        "groups": np.asarray(groups),
        "spectra": rng.uniform(0.1, 10.0, (len(groups), n_freqs)),
    }


def test_parallel_training_groups_keeps_complete_training_triplets():
    manifest = manifest_of(
        [("park-lyon-2-0", d, "train") for d in "cab"]          # complete, shuffled order
        + [("bus-lyon-1-0", d, "train") for d in "abc"]         # complete
        + [("bus-lyon-1-1", "a", "train")]                      # a only
        + [("bus-lyon-1-2", d, "train") for d in "ab"]          # c missing
        + [("tram-oslo-3-0", d, "evaluate") for d in "abc"]     # not training
    )
    rows = parallel_training_groups(manifest, DEVICES)
    assert rows["group"].tolist() == ["bus-lyon-1-0"] * 3 + ["park-lyon-2-0"] * 3
    assert rows["device"].tolist() == ["a", "b", "c"] * 2


def test_a_group_with_one_device_twice_is_refused_naming_the_group_device_and_files():
    manifest = manifest_of([("bus-lyon-1-0", d, "train") for d in "abc"] + [("park-lyon-2-0", d, "train") for d in "abc"])
    twin = manifest.iloc[[4]].assign(filename="audio/park-lyon-2-0-b-copy.wav")
    manifest = pd.concat([manifest, twin], ignore_index=True)
    with pytest.raises(DatasetError) as err:
        parallel_training_groups(manifest, DEVICES)
    assert str(err.value) == ("group 'park-lyon-2-0' has more than one device-'b' file in split 'train' "
                              "(audio/park-lyon-2-0-b.wav, audio/park-lyon-2-0-b-copy.wav)")


def test_files_left_out_of_the_triplets_are_counted_per_device_in_the_log(caplog):
    manifest = manifest_of([("bus-lyon-1-0", d, "train") for d in "abc"] + [("bus-lyon-1-1", d, "train") for d in "ab"]
                           + [("bus-lyon-1-2", "a", "train")])
    with caplog.at_level("WARNING", logger="heatedasc.correction"):
        parallel_training_groups(manifest, DEVICES)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "2 device-'a' files in split 'train' lack a twin of every device in ['a', 'b', 'c'] and are left out of the "
        "spectrum correction (e.g. audio/bus-lyon-1-1-a.wav, audio/bus-lyon-1-2-a.wav)",
        "1 device-'b' files in split 'train' lack a twin of every device in ['a', 'b', 'c'] and are left out of the "
        "spectrum correction (e.g. audio/bus-lyon-1-1-b.wav)",
    ]


def test_device_without_parallel_files_names_device_and_split():
    manifest = manifest_of([("bus-lyon-1-0", d, "train") for d in "ab"] + [("bus-lyon-1-0", "c", "evaluate")])
    expected = r"device 'c' has no parallel recordings .* in split 'train' \(0 device-'c' files"
    with pytest.raises(DatasetError, match=expected):
        parallel_training_groups(manifest, DEVICES)
    # Mean spectra lacking device c (its files never made it into a triplet): named with the split.
    spectra = random_spectra(np.random.default_rng(0), 2, 5)
    keep = spectra["devices"] != "c"
    spectra = {k: v[keep] for k, v in spectra.items()}
    with pytest.raises(DatasetError, match=r"device 'c' has no parallel files in split 'train'"):
        estimate_coefficients(spectra, reference_devices=["b", "c"], estimator="ratio_of_means", devices=DEVICES)


def test_ratio_of_means_matches_direct_numpy():
    rng = np.random.default_rng(1)
    spectra = random_spectra(rng, 4, 6)
    m = spectra["spectra"].reshape(4, 3, 6)  # [group, device a/b/c, freq]
    S = m.mean(axis=0)
    for refs, ref_idx in ((["a", "b", "c"], [0, 1, 2]), (["b", "c"], [1, 2])):
        c = estimate_coefficients(spectra, reference_devices=refs, estimator="ratio_of_means", devices=DEVICES)
        R = S[ref_idx].mean(axis=0)
        for j, d in enumerate(DEVICES):
            np.testing.assert_allclose(c[d], R / S[j], rtol=1e-12)


def test_mean_of_ratios_matches_direct_numpy_and_differs_from_ratio_of_means():
    rng = np.random.default_rng(2)
    spectra = random_spectra(rng, 4, 6)
    order = rng.permutation(12)  # file order must not matter
    shuffled = {k: v[order] for k, v in spectra.items()}
    m = spectra["spectra"].reshape(4, 3, 6)
    R = m[:, [1, 2]].mean(axis=1)  # ref_bc, per triplet
    c = estimate_coefficients(shuffled, reference_devices=["b", "c"], estimator="mean_of_ratios", devices=DEVICES)
    for j, d in enumerate(DEVICES):
        np.testing.assert_allclose(c[d], (R / m[:, j]).mean(axis=0), rtol=1e-12)
    c_rom = estimate_coefficients(shuffled, reference_devices=["b", "c"], estimator="ratio_of_means", devices=DEVICES)
    assert not np.allclose(c["a"], c_rom["a"])


def test_none_is_ones_and_references_differ():
    spectra = random_spectra(np.random.default_rng(3), 3, 7)
    none = estimate_coefficients(spectra, reference_devices=[], estimator="ratio_of_means", devices=DEVICES)
    assert set(none) == set(DEVICES)
    for d in DEVICES:
        np.testing.assert_array_equal(none[d], np.ones(7))
    abc = estimate_coefficients(spectra, reference_devices=DEVICES, estimator="ratio_of_means", devices=DEVICES)
    bc = estimate_coefficients(spectra, reference_devices=["b", "c"], estimator="ratio_of_means", devices=DEVICES)
    for d in DEVICES:
        assert not np.allclose(abc[d], bc[d])
    # ref_abc: R is the mean of the S_d, so the harmonic-type identity mean_d(1 / c_d) = 1 holds per bin.
    np.testing.assert_allclose(np.mean([1 / abc[d] for d in DEVICES], axis=0), 1.0, rtol=1e-12)


def test_bad_estimator_or_reference_is_named():
    spectra = random_spectra(np.random.default_rng(4), 2, 3)
    with pytest.raises(ValueError, match="unknown estimator 'median'"):
        estimate_coefficients(spectra, reference_devices=["a"], estimator="median", devices=DEVICES)
    with pytest.raises(ValueError, match="reference device 'd' is not one of"):
        estimate_coefficients(spectra, reference_devices=["b", "d"], estimator="ratio_of_means", devices=DEVICES)


def test_known_device_gain_gets_the_inverse_coefficient(tmp_path):
    """b records at 2x the amplitude of a, c at 0.5x: |X| scales linearly, so c_b = 1/2, c_c = 2 for ref a."""
    rng = np.random.default_rng(5)
    audio = tmp_path / "audio"
    audio.mkdir()
    spec = []
    for i in range(3):
        group = f"metro-riga-{i}-0"
        x = (0.1 * rng.standard_normal(6000) + 0.02).astype(np.float32)
        for d, gain in (("a", 1.0), ("b", 2.0), ("c", 0.5)):
            sf.write(audio / f"{group}-{d}.wav", gain * x, 16000, subtype="FLOAT")
            spec.append((group, d, "train"))
    spec.append(("metro-riga-9-0", "a", "train"))  # no twins: must not enter the spectra
    manifest = manifest_of(spec)
    spectra = compute_mean_spectra(manifest, audio, n_fft=256, hop_length=64, remove_dc=True, devices=DEVICES,
                                   batch_size=4, progress=False)
    assert spectra["spectra"].shape == (9, 129) and spectra["spectra"].dtype == np.float64
    assert "audio/metro-riga-9-0-a.wav" not in spectra["filenames"].tolist()

    c = estimate_coefficients(spectra, reference_devices=["a"], estimator="ratio_of_means", devices=DEVICES)
    np.testing.assert_allclose(c["a"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(c["b"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(c["c"], 2.0, rtol=1e-5)
    abc = estimate_coefficients(spectra, reference_devices=DEVICES, estimator="mean_of_ratios", devices=DEVICES)
    np.testing.assert_allclose(abc["b"], (3.5 / 3) / 2.0, rtol=1e-5)  # R = mean(1, 2, 0.5)·S_a

    # m_i(f) itself against numpy: DC removed, periodic Hann, centred reflect-padded frames, mean of |rfft|
    x, _ = sf.read(audio / "metro-riga-0-0-b.wav", dtype="float64")
    x = np.pad(x - x.mean(), 128, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256)
    frames = np.stack([x[s:s + 256] * window for s in range(0, len(x) - 256 + 1, 64)])
    direct = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
    row = spectra["filenames"].tolist().index("audio/metro-riga-0-0-b.wav")
    np.testing.assert_allclose(spectra["spectra"][row], direct, rtol=2e-5, atol=1e-7 * direct.max())

    save_mean_spectra(tmp_path / "spectra.npz", spectra)
    loaded = load_mean_spectra(tmp_path / "spectra.npz")
    np.testing.assert_array_equal(loaded["spectra"], spectra["spectra"])
    assert loaded["filenames"].tolist() == spectra["filenames"].tolist()
    assert loaded["groups"].dtype.kind == "U"


def test_constant_triplet_file_is_named_before_it_makes_coefficients_infinite(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(8)
    for d in DEVICES:
        x = np.full(4000, 0.3) if d == "c" else 0.1 * rng.standard_normal(4000)  # c: DC only
        sf.write(audio / f"bus-lyon-1-0-{d}.wav", x, 16000, subtype="FLOAT")
    manifest = manifest_of([("bus-lyon-1-0", d, "train") for d in DEVICES])
    with pytest.raises(ValueError, match=r"audio/bus-lyon-1-0-c.wav: mean magnitude spectrum is 0.0 at bin 0 "
                                         r"\(129 of 129 bins not > 0\)"):
        compute_mean_spectra(manifest, audio, n_fft=256, hop_length=64, remove_dc=True, devices=DEVICES,
                             batch_size=4, progress=False)


def test_coefficients_round_trip_without_pickle_and_plot(tmp_path):
    spectra = random_spectra(np.random.default_rng(6), 3, 1025)
    paths = []
    for name, refs in (("ref_abc", DEVICES), ("ref_bc", ["b", "c"]), ("none", [])):
        coefficients = estimate_coefficients(spectra, reference_devices=refs, estimator="ratio_of_means",
                                             devices=DEVICES)
        path = tmp_path / f"{name}.npz"
        save_coefficients(path, coefficients, correction=name, reference_devices=refs,
                          estimator="ratio_of_means", files=spectra["filenames"].tolist(), sample_rate=44100,
                          n_fft=2048)
        loaded, meta = load_coefficients(path)
        assert list(loaded) == DEVICES
        for d in DEVICES:
            np.testing.assert_array_equal(loaded[d], coefficients[d])
            assert loaded[d].dtype == np.float64
        assert meta["correction"] == name and meta["reference_devices"] == list(refs)
        assert meta["estimator"] == "ratio_of_means" and meta["files"] == spectra["filenames"].tolist()
        assert meta["n_fft"] == 2048 and meta["sample_rate"] == 44100
        with np.load(path, allow_pickle=False) as z:  # strings, not pickled objects
            assert z["devices"].dtype.kind == z["files"].dtype.kind == z["reference_devices"].dtype.kind == "U"
            assert z["reference_devices"].shape == (len(refs),)
        paths.append(path)
    out = tmp_path / "fig" / "coefficients.png"
    plot_coefficients(paths, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["coefficients.png"]


def test_coefficient_curves_are_decibels_against_bin_frequencies(tmp_path):
    """What the coefficient figure draws: bin k at k·sr/n_fft Hz, 20·log10 c in dB (closed form)."""
    c = {"a": np.full(5, 10.0), "b": np.array([1.0, 0.1, 100.0, 2.0, 0.5])}
    path = tmp_path / "ref_a.npz"
    save_coefficients(path, c, correction="ref_a", reference_devices=["a"], estimator="mean_of_ratios", files=["x"],
                      sample_rate=16000, n_fft=8)
    title, curves = coefficient_curves(path)
    assert title == "ref_a (ref a, mean_of_ratios)"
    assert list(curves) == ["a", "b"]
    np.testing.assert_array_equal(curves["b"][0], [0.0, 2000.0, 4000.0, 6000.0, 8000.0])
    np.testing.assert_allclose(curves["a"][1], 20.0, rtol=1e-15)
    np.testing.assert_allclose(curves["b"][1], [0.0, -20.0, 40.0, 20 * np.log10(2.0), 20 * np.log10(0.5)],
                               rtol=1e-15, atol=1e-15)
    save_coefficients(path, {"a": np.ones(5)}, correction="none", reference_devices=[], estimator="ratio_of_means",
                      files=[], sample_rate=16000, n_fft=8)
    assert coefficient_curves(path)[0] == "none (ref -, ratio_of_means)"
    with np.load(path, allow_pickle=False) as z:  # empty lists are stored as empty string arrays too
        assert z["files"].dtype.kind == z["reference_devices"].dtype.kind == "U"
    save_coefficients(path, {"a": np.ones(5), "b": np.ones(5)}, correction="ref_ab", reference_devices=["a", "b"],
                      estimator="ratio_of_means", files=[], sample_rate=16000, n_fft=9)  # odd n_fft: 9 // 2 + 1 bins
    assert coefficient_curves(path)[0] == "ref_ab (ref a,b, ratio_of_means)"
    np.testing.assert_allclose(coefficient_curves(path)[1]["b"][0], np.arange(5) * 16000 / 9, rtol=1e-15)
    with pytest.raises(ValueError, match=r"ref_a.npz: 5 coefficients per device do not fit n_fft 16 \(9 bins\)"):
        save_coefficients(path.with_name("ref_a.npz"), c, correction="ref_a", reference_devices=["a"],
                          estimator="ratio_of_means", files=["x"], sample_rate=16000, n_fft=16)
    with pytest.raises(ValueError, match="^plot_coefficients needs at least one coefficient file$"):
        plot_coefficients([], tmp_path / "none.png")


def test_coefficients_keep_their_sample_rate_and_n_fft_and_a_file_missing_a_key_is_named(tmp_path):
    spectra = random_spectra(np.random.default_rng(7), 2, 513)
    c = estimate_coefficients(spectra, reference_devices=DEVICES, estimator="ratio_of_means", devices=DEVICES)
    path = tmp_path / "c.npz"
    save_coefficients(path, c, correction="ref_abc", reference_devices=DEVICES, estimator="ratio_of_means",
                      files=spectra["filenames"].tolist(), sample_rate=16000, n_fft=1024)
    _, meta = load_coefficients(path)
    assert meta["sample_rate"] == 16000 and meta["n_fft"] == 1024
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if k != "files"}
    np.savez(tmp_path / "broken.npz", **kept)
    with pytest.raises(ValueError, match=r"broken.npz: missing keys \['files'\]"):
        load_coefficients(tmp_path / "broken.npz")


def test_holdout_locations_are_left_out_of_the_correction_and_are_the_ones_training_validates_on():
    from heatedasc.tau import HOLDOUT_SPLIT, select_holdout, without_holdout

    spec = [(f"park-lyon-{loc}-{seg}", d, "train") for loc in range(10) for seg in range(2) for d in "abc"]
    spec += [(f"bus-oslo-{loc}-0", d, "evaluate") for loc in range(3) for d in "abc"]
    manifest = manifest_of(spec)
    holdout = {"fraction": 0.3, "seed": 5}
    fitted = without_holdout(manifest, holdout)
    held = set(fitted.loc[fitted["split"] == HOLDOUT_SPLIT, "identifier"])
    assert len(held) == 3  # 0.3 of 10 training locations
    assert set(fitted.loc[fitted["split"] == "evaluate", "identifier"]) == {"oslo-0", "oslo-1", "oslo-2"}
    # Training's validation rows (same function over the training cache's identifiers, in any order).
    train_ids = manifest.loc[manifest["split"] == "train", "identifier"].to_numpy()[::-1]
    assert set(train_ids[select_holdout(train_ids, 0.3, 5)]) == held
    rows = parallel_training_groups(fitted, DEVICES)
    assert set(rows["identifier"]).isdisjoint(held) and len(set(rows["identifier"])) == 7
    assert without_holdout(manifest, None) is manifest  # test / last selection: every location is fitted


def test_one_device_alone_keeps_all_its_training_files_with_the_manifests_columns():
    manifest = manifest_of([("bus-lyon-1-0", "a", "train"), ("bus-lyon-1-1", "a", "train"),
                            ("bus-lyon-1-0", "b", "train"), ("bus-lyon-1-2", "a", "evaluate")])
    rows = parallel_training_groups(manifest, ["a"])
    assert rows["filename"].tolist() == ["audio/bus-lyon-1-0-a.wav", "audio/bus-lyon-1-1-a.wav"]
    assert list(rows.columns) == list(manifest.columns) and rows.index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="^parallel_training_groups needs at least one device$"):
        parallel_training_groups(manifest, [])


def test_duplicates_are_named_by_the_first_row_and_at_most_four_files_are_listed():
    manifest = manifest_of([("bus-lyon-1-0", "a", "train"), ("park-lyon-2-0", "b", "train")] * 3)
    with pytest.raises(DatasetError) as err:
        parallel_training_groups(manifest, DEVICES)
    assert str(err.value) == ("group 'bus-lyon-1-0' has more than one device-'a' file in split 'train' "
                              "(audio/bus-lyon-1-0-a.wav, audio/park-lyon-2-0-b.wav, audio/bus-lyon-1-0-a.wav, "
                              "audio/park-lyon-2-0-b.wav)")


def test_the_log_names_at_most_three_files_left_out(caplog):
    manifest = manifest_of([("bus-lyon-1-0", d, "train") for d in "abc"]
                           + [(f"bus-lyon-1-{i}", "a", "train") for i in range(1, 6)])
    with caplog.at_level("WARNING", logger="heatedasc.correction"):
        parallel_training_groups(manifest, DEVICES)
    assert [r.getMessage() for r in caplog.records] == [
        "5 device-'a' files in split 'train' lack a twin of every device in ['a', 'b', 'c'] and are left out of the "
        "spectrum correction (e.g. audio/bus-lyon-1-1-a.wav, audio/bus-lyon-1-2-a.wav, audio/bus-lyon-1-3-a.wav)"]


def write_triplets(audio, rng, groups, silent=()):
    spec = []
    for g in groups:
        for d in DEVICES:
            x = np.zeros(4000) if (g, d) in silent else 0.1 * rng.standard_normal(4000)
            sf.write(audio / f"{g}-{d}.wav", x, 16000, subtype="FLOAT")
            spec.append((g, d, "train"))
    return manifest_of(spec)


def test_mean_spectra_average_the_float32_magnitudes_in_float64(tmp_path):
    from heatedasc.dsp import stft_magnitude

    audio = tmp_path / "audio"
    audio.mkdir()
    manifest = write_triplets(audio, np.random.default_rng(3), ["bus-lyon-1-0", "bus-lyon-1-1"])
    got = compute_mean_spectra(manifest, audio, n_fft=256, hop_length=64, remove_dc=False, devices=DEVICES,
                               batch_size=3, progress=False)
    assert got["spectra"].dtype == np.float64 and got["spectra"].shape == (6, 129)
    assert got["devices"].tolist() == DEVICES * 2 and got["groups"].tolist() == ["bus-lyon-1-0"] * 3 + ["bus-lyon-1-1"] * 3
    assert got["filenames"].dtype.kind == got["devices"].dtype.kind == got["groups"].dtype.kind == "U"
    for i, f in enumerate(got["filenames"]):
        wave = torch.from_numpy(sf.read(tmp_path / f, dtype="float32")[0])[None]
        mag = stft_magnitude(wave, n_fft=256, hop_length=64, remove_dc=False)[0].numpy().astype(np.float64)
        np.testing.assert_allclose(got["spectra"][i], mag.mean(axis=1), rtol=1e-13)


def test_a_triplet_file_of_another_length_is_named_in_any_batch(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    manifest = write_triplets(audio, np.random.default_rng(5), ["bus-lyon-1-0", "bus-lyon-1-1"])
    for d in DEVICES:  # the whole second batch is shorter: only the first batch's length tells
        sf.write(audio / f"bus-lyon-1-1-{d}.wav", np.zeros(3000), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"bus-lyon-1-1-a.wav: .*3000.*4000|bus-lyon-1-1-a.wav: .*4000.*3000"):
        compute_mean_spectra(manifest, audio, n_fft=256, hop_length=64, remove_dc=False, devices=DEVICES,
                             batch_size=3, progress=False)


def test_coefficients_are_stored_in_float64(tmp_path):
    save_coefficients(tmp_path / "c.npz", {"a": np.float32([1.5, 0.25, 3.0])}, correction="ref_a",
                      reference_devices=["a"], estimator="ratio_of_means", files=["x"], sample_rate=8, n_fft=4)
    with np.load(tmp_path / "c.npz") as z:
        assert z["coefficients"].dtype == np.float64


def test_every_silent_triplet_file_is_counted(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    manifest = write_triplets(audio, np.random.default_rng(4), ["bus-lyon-1-0", "bus-lyon-1-1"],
                              silent={("bus-lyon-1-0", "b"), ("bus-lyon-1-1", "c")})
    with pytest.raises(ValueError, match=r"bus-lyon-1-0-b.wav: .* \(2 such file\(s\) among the training triplets\)"):
        compute_mean_spectra(manifest, audio, n_fft=256, hop_length=64, remove_dc=False, devices=DEVICES,
                             batch_size=6, progress=False)


def test_coefficients_are_computed_in_float64_from_float32_spectra():
    spectra = random_spectra(np.random.default_rng(8), 3, 17)
    single = {**spectra, "spectra": spectra["spectra"].astype(np.float32)}
    for estimator in ("ratio_of_means", "mean_of_ratios"):
        got = estimate_coefficients(single, reference_devices=["a", "b"], estimator=estimator, devices=DEVICES)
        want = estimate_coefficients({**spectra, "spectra": single["spectra"].astype(np.float64)},
                                     reference_devices=["a", "b"], estimator=estimator, devices=DEVICES)
        for d in DEVICES:
            assert got[d].dtype == np.float64
            np.testing.assert_array_equal(got[d], want[d])


def test_coefficient_estimation_errors_are_named():
    spectra = random_spectra(np.random.default_rng(9), 2, 5)
    broken = {k: v[[0, 1, 5]] for k, v in spectra.items()}  # g0: a, b; g1: c — no group holds all three
    with pytest.raises(DatasetError, match=r"^no group holds all devices \['a', 'b', 'c'\] in split 'train' "
                                           r"\(mean spectra\)$"):
        estimate_coefficients(broken, reference_devices=["a"], estimator="mean_of_ratios", devices=DEVICES)
    spectra["spectra"][[1, 4], 3] = 0.0  # device b, bin 3, in both groups
    with pytest.raises(ValueError, match=r"^coefficients for device 'b' are not finite \(a silent file or frequency "
                                         r"bin\?\)$"):
        estimate_coefficients(spectra, reference_devices=["a"], estimator="ratio_of_means", devices=DEVICES)


def test_mean_spectra_round_trip_in_float64_and_refuse_pickles_and_missing_keys(tmp_path):
    spectra = random_spectra(np.random.default_rng(10), 2, 9)
    save_mean_spectra(tmp_path / "m.npz", {**spectra, "spectra": spectra["spectra"].astype(np.float32)})
    loaded = load_mean_spectra(tmp_path / "m.npz")
    for k in ("filenames", "devices", "groups"):
        assert loaded[k].tolist() == spectra[k].tolist() and loaded[k].dtype.kind == "U"
    assert loaded["spectra"].dtype == np.float64
    np.testing.assert_array_equal(loaded["spectra"], spectra["spectra"].astype(np.float32))
    np.savez(tmp_path / "short.npz", filenames=spectra["filenames"], spectra=spectra["spectra"])
    with pytest.raises(ValueError, match=r"short.npz: missing keys \['devices', 'groups'\]$"):
        load_mean_spectra(tmp_path / "short.npz")
    np.savez(tmp_path / "pickled.npz", **{**spectra, "devices": np.asarray(list(spectra["devices"]), dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_mean_spectra(tmp_path / "pickled.npz")
    c = estimate_coefficients(spectra, reference_devices=["a"], estimator="ratio_of_means", devices=DEVICES)
    save_coefficients(tmp_path / "c.npz", c, correction="ref_a", reference_devices=["a"], estimator="ratio_of_means",
                      files=["x"], sample_rate=16000, n_fft=16)
    with np.load(tmp_path / "c.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "c_pickled.npz", **{**arrays, "files": np.asarray(["x"], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_coefficients(tmp_path / "c_pickled.npz")
