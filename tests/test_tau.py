"""TAU layout parsing and the validated loader: each bad input names the file and row."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from heatedasc.synth import generate_dataset
from heatedasc.tau import DEVICES, SCENES, DatasetError, load_tau, parse_filename, summarize


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("tau") / "tau"
    generate_dataset(
        root, seed=0, clip_seconds=0.1, sample_rate=44100, train_parallel_per_scene=1,
        train_a_only_per_scene=1, evaluate_parallel_per_scene=1, evaluate_a_only_per_scene=0,
        device_a_48k_stereo=False, cities=["barcelona", "helsinki"], device_strength_db=12.0, progress=False,
    )
    return root


@pytest.fixture
def root(pristine, tmp_path):
    copy = tmp_path / "tau"
    shutil.copytree(pristine, copy)
    return copy


def lines(path):
    return path.read_text().splitlines()


def write_lines(path, rows):
    path.write_text("\n".join(rows) + "\n")


def test_the_ten_scenes_and_three_devices_and_dataset_errors_being_value_errors():
    assert SCENES[0] == "airport" and SCENES[-1] == "tram" and len(SCENES) == 10
    assert DEVICES == ("a", "b", "c")
    assert issubclass(DatasetError, ValueError)


def test_parse_filename_splits_every_field_and_names_a_malformed_name():
    fields = parse_filename("audio/street_traffic-barcelona-161-4901-b.wav")
    assert fields == {
        "scene_label": "street_traffic", "city": "barcelona", "location": "161", "segment": "4901",
        "device": "b", "identifier": "barcelona-161", "group": "street_traffic-barcelona-161-4901",
    }
    with pytest.raises(DatasetError, match="street-traffic-barcelona-161-4901-b.wav"):
        parse_filename("audio/street-traffic-barcelona-161-4901-b.wav")


def test_load_accepts_generator_output(root):
    df = load_tau(root)
    assert list(df.columns) == ["filename", "scene_label", "label", "device", "city", "location", "segment",
                                "identifier", "group", "split", "source_label"]
    assert len(df) == 10 * (3 + 1 + 3)
    assert df.groupby(["split", "device"]).size().to_dict() == {
        ("evaluate", "a"): 10, ("evaluate", "b"): 10, ("evaluate", "c"): 10,
        ("train", "a"): 20, ("train", "b"): 10, ("train", "c"): 10,
    }
    assert (df["label"] == df["scene_label"].map(SCENES.index)).all()
    row = df[df["filename"] == "audio/airport-barcelona-0-0-a.wav"].iloc[0]
    assert (row["city"], row["location"], row["segment"], row["identifier"], row["group"]) == (
        "barcelona", "0", "0", "barcelona-0", "airport-barcelona-0-0")
    summary = summarize(df)
    assert list(summary.columns) == ["split", "device", "scene_label", "count"]
    assert summary["count"].sum() == len(df)
    assert summary.set_index(["split", "device", "scene_label"]).loc[("train", "a", "bus"), "count"] == 2


def test_file_in_no_fold_is_unused(root):
    meta = lines(root / "meta.csv")
    shutil.copy(root / "audio" / "airport-barcelona-0-0-a.wav", root / "audio" / "airport-barcelona-0-99-a.wav")
    write_lines(root / "meta.csv", meta + ["audio/airport-barcelona-0-99-a.wav\tairport\tbarcelona-0\ta"])
    df = load_tau(root)
    assert df.set_index("filename").loc["audio/airport-barcelona-0-99-a.wav", "split"] == "unused"
    assert (df["split"] == "unused").sum() == 1


def test_missing_root_and_meta(root, tmp_path):
    with pytest.raises(DatasetError, match="data root does not exist") as err:
        load_tau(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    (root / "meta.csv").unlink()
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert str(root / "meta.csv") in str(err.value)


def test_missing_column(root):
    meta = lines(root / "meta.csv")
    write_lines(root / "meta.csv", ["filename\tscene\tidentifier\tsource_label"] + meta[1:])
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['scene_label'\]") as err:
        load_tau(root)
    assert str(root / "meta.csv") in str(err.value)


def test_comma_separated_meta_rejected(root):
    meta = lines(root / "meta.csv")
    write_lines(root / "meta.csv", [line.replace("\t", ",") for line in meta])
    with pytest.raises(DatasetError, match="tab-separated"):
        load_tau(root)


def test_row_naming_missing_file(root):
    meta = lines(root / "meta.csv")
    name = meta[3].split("\t")[0]
    (root / name).unlink()
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    msg = str(err.value)
    assert f"meta.csv: row 3 ({name})" in msg
    assert "does not exist" in msg and str(root / name) in msg


def test_unknown_device_letter(root):
    # the allowed devices are a parameter: restricting them rejects b
    with pytest.raises(DatasetError, match=r"row \d+ \(audio/\S+-b\.wav\): unknown device letter 'b'; allowed: a, c"):
        load_tau(root, devices=("a", "c"))
    meta = lines(root / "meta.csv")
    name = meta[2].split("\t")[0]
    bad = name[:-5] + "d.wav"
    (root / name).rename(root / bad)
    meta[2] = meta[2].replace(name, bad)
    write_lines(root / "meta.csv", meta)
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    msg = str(err.value)
    assert f"row 2 ({bad})" in msg
    assert "unknown device letter 'd'; allowed: a, b, c" in msg


def test_unknown_scene_label(root):
    meta = lines(root / "meta.csv")
    fields = meta[1].split("\t")
    meta[1] = "\t".join([fields[0], "beach", *fields[2:]])
    write_lines(root / "meta.csv", meta)
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert f"row 1 ({fields[0]})" in str(err.value)
    assert "unknown scene label 'beach'" in str(err.value)


def test_meta_label_disagrees_with_file_name(root):
    meta = lines(root / "meta.csv")
    fields = meta[1].split("\t")
    assert fields[1] == "airport"
    meta[1] = "\t".join([fields[0], "bus", *fields[2:]])
    write_lines(root / "meta.csv", meta)
    with pytest.raises(DatasetError,
                       match=r"row 1 \(audio/airport-.*scene label 'bus' disagrees with the file name's scene 'airport'"):
        load_tau(root)


def test_fold_names_file_not_in_meta(root):
    fold = root / "evaluation_setup" / "fold1_train.csv"
    rows = lines(fold)
    write_lines(fold, rows[:4] + ["audio/bus-paris-999-0-a.wav\tbus"] + rows[4:])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    msg = str(err.value)
    assert f"{fold}: row 4 (audio/bus-paris-999-0-a.wav)" in msg
    assert "not listed in" in msg and "meta.csv" in msg


def test_fold_label_mismatch(root):
    fold = root / "evaluation_setup" / "fold1_evaluate.csv"
    rows = lines(fold)
    name = rows[2].split("\t")[0]
    rows[2] = f"{name}\ttram"
    write_lines(fold, rows)
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    msg = str(err.value)
    assert f"{fold}: row 2 ({name})" in msg
    assert "scene label 'tram' disagrees with meta.csv ('airport')" in msg


def test_duplicated_rows(root):
    meta = lines(root / "meta.csv")
    write_lines(root / "meta.csv", meta[:6] + [meta[2]] + meta[6:])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert f"meta.csv: row 6: duplicated file {meta[2].split(chr(9))[0]}" in str(err.value)


def test_duplicated_fold_rows(root):
    fold = root / "evaluation_setup" / "fold1_train.csv"
    rows = lines(fold)
    write_lines(fold, rows + [rows[1]])
    with pytest.raises(DatasetError, match=rf"fold1_train.csv: row {len(rows)}: duplicated file {rows[1].split()[0]}"):
        load_tau(root)


def test_file_in_train_and_evaluate(root):
    train = root / "evaluation_setup" / "fold1_train.csv"
    evaluate = root / "evaluation_setup" / "fold1_evaluate.csv"
    first_train = lines(train)[1]
    write_lines(evaluate, lines(evaluate) + [first_train])
    n = len(lines(evaluate)) - 1
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    msg = str(err.value)
    assert f"fold1_evaluate.csv: row {n} ({first_train.split()[0]})" in msg
    assert "also listed in fold1_train.csv" in msg


def test_source_label_disagrees_with_file_name(root):
    meta = lines(root / "meta.csv")
    fields = meta[3].split("\t")
    wrong = "c" if fields[3] != "c" else "b"
    meta[3] = "\t".join(fields[:3] + [wrong])
    write_lines(root / "meta.csv", meta)
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert (f"{root / 'meta.csv'}: row 3 ({fields[0]}): source_label '{wrong}' disagrees with the file name's "
            f"device '{fields[0][-5]}'") in str(err.value)


@pytest.mark.parametrize("listed, expected", [
    ("audio/bus-paris-999-0-a.wav", "file is not listed in {meta}"),   # not in meta at all
    (None, "file is not listed in {evaluate}"),                         # a training file
])
def test_test_fold_names_a_file_outside_fold1_evaluate(root, listed, expected):
    setup = root / "evaluation_setup"
    if listed is None:
        listed = lines(setup / "fold1_train.csv")[1].split("\t")[0]
    test = lines(setup / "fold1_test.csv")
    write_lines(setup / "fold1_test.csv", test[:2] + [listed] + test[2:])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert f"{setup / 'fold1_test.csv'}: row 2 ({listed}): " + expected.format(
        meta=root / "meta.csv", evaluate=setup / "fold1_evaluate.csv") in str(err.value)


def test_manifest_columns_carry_the_meta_values_and_integer_labels(root):
    df = load_tau(root)
    assert (df["source_label"] == df["device"]).all()  # meta.csv's source_label column, checked against the name
    assert df["label"].dtype.kind == "i"


def test_tables_are_read_as_text_exactly(tmp_path):
    from heatedasc.tau import _read_table

    path = tmp_path / "t.csv"
    path.write_text("filename\tidentifier\tsource_label\tsegment\naudio/x.wav\tNA\t007\t010\n"
                    "audio/y.wav\t\tnull\t2\n")
    df = _read_table(path, ("filename",))
    assert df["identifier"].tolist() == ["NA", ""] and df["source_label"].tolist() == ["007", "null"]
    assert df["segment"].tolist() == ["010", "2"]  # a column of digits stays text too
    path.write_text("filename\tscene_label\n\"audio/x.wav\tbus\n")  # an unterminated quote
    with pytest.raises(DatasetError, match=rf"^{path}: cannot parse as a tab-separated table \("):
        _read_table(path, ("filename",))


def test_file_name_errors_are_exact():
    with pytest.raises(DatasetError, match=r"^audio/bus-lyon-1-0-a\.flac: expected a \.wav file name$"):
        parse_filename("audio/bus-lyon-1-0-a.flac")
    with pytest.raises(DatasetError, match=r"^audio/bus--1-0-a\.wav: file name must look like "
                                           r"<scene>-<city>-<location>-<segment>-<device>\.wav$"):
        parse_filename("audio/bus--1-0-a.wav")  # an empty city


def test_row_errors_quote_the_row_and_the_reason_exactly(root):
    meta = lines(root / "meta.csv")
    name, scene, identifier, source = meta[1].split("\t")
    write_lines(root / "meta.csv", [meta[0], f"{name}\t{scene}\tlyon-9\t{source}", *meta[2:]])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert str(err.value) == (f"{root / 'meta.csv'}: row 1 ({name}): identifier 'lyon-9' disagrees with the file "
                              f"name ({identifier!r})")
    write_lines(root / "meta.csv", [meta[0], f"{name}\tbeach\t{identifier}\t{source}", *meta[2:]])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert str(err.value).endswith("unknown scene label 'beach'; allowed: " + ", ".join(SCENES))
    write_lines(root / "meta.csv", [meta[0], f"audio/{scene}.wav\t{scene}\t{identifier}\t{source}", *meta[2:]])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert str(err.value).startswith(f"{root / 'meta.csv'}: row 1 (audio/{scene}.wav): audio/{scene}.wav: file name "
                                     "must look like")


def test_a_file_twice_in_the_test_list_names_that_list(root):
    test = root / "evaluation_setup" / "fold1_test.csv"
    rows = lines(test)
    write_lines(test, rows + [rows[1]])
    with pytest.raises(DatasetError) as err:
        load_tau(root)
    assert str(err.value) == f"{test}: row {len(rows)}: duplicated file {rows[1]}"


def test_summary_is_sorted_by_split_device_and_scene(root):
    df = load_tau(root).sample(frac=1.0, random_state=3)
    summary = summarize(df)
    keys = list(zip(summary["split"], summary["device"], summary["scene_label"]))
    assert keys == sorted(keys)


def test_the_prepared_manifest_keeps_location_and_segment_as_text(tmp_path):
    from heatedasc.tau import read_manifest

    path = tmp_path / "manifest.csv"
    path.write_text("filename,location,segment,label\naudio/bus-lyon-007-010-a.wav,007,010,1\n")
    df = read_manifest(path)
    assert df["location"].tolist() == ["007"] and df["segment"].tolist() == ["010"] and df["label"].tolist() == [1]


def test_holdout_bounds_sizes_and_draw():
    from heatedasc.tau import select_holdout

    ids = [f"lyon-{i}" for i in range(10) for _ in range(3)]
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^train.holdout_fraction must be in \(0, 1\), got {bad}$"):
            select_holdout(ids, bad, 0)
    with pytest.raises(ValueError, match="^train.holdout_fraction: the training cache has fewer than 2 recording "
                                         "locations$"):
        select_holdout(["lyon-1"] * 4, 0.5, 0)
    two = select_holdout(["lyon-1", "lyon-2", "lyon-1"], 0.5, 0)  # two locations: one is held
    assert two.sum() in (1, 2) and len(set(np.asarray(["lyon-1", "lyon-2", "lyon-1"])[two])) == 1
    assert len(set(np.asarray(ids)[select_holdout(ids, 0.01, 0)])) == 1  # at least one location
    held = np.asarray(ids)[select_holdout(ids, 0.99, 0)]
    assert len(set(held)) == 9 and len(held) == 27  # at most all but one, each location whole
    # The draw is part of every holdout run's record: the same locations for the same seed, on any machine.
    assert sorted(map(str, set(np.asarray(ids)[select_holdout(ids, 0.3, 7)]))) == ["lyon-1", "lyon-6", "lyon-9"]


def test_an_empty_dataset_is_an_empty_manifest_with_every_column(tmp_path):
    root = tmp_path / "tau"
    (root / "evaluation_setup").mkdir(parents=True)
    write_lines(root / "meta.csv", ["filename\tscene_label\tidentifier\tsource_label"])
    for split in ("train", "evaluate"):
        write_lines(root / "evaluation_setup" / f"fold1_{split}.csv", ["filename\tscene_label"])
    write_lines(root / "evaluation_setup" / "fold1_test.csv", ["filename"])
    df = load_tau(root)
    assert len(df) == 0 and list(df.columns) == ["filename", "scene_label", "label", "device", "city", "location",
                                                 "segment", "identifier", "group", "split", "source_label"]
