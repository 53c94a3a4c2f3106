"""The training package's decisions, tested directly and cheaply (issue 23): which rows train and which validate
(holdout by location, the avg_bc device check), which caches a run accepts (provenance, holdout, shape, labels),
which epoch is kept for each train.monitor and train.selection, how the plateau schedule is fed, what a checkpoint
keeps and a resume restores, and what the outputs hold.

Each test builds tiny inputs by hand (a few rows, a one-line model, a fake runner where the network would only
cost time) and checks them against values worked out by hand, so mutation testing can run these in well under a
second each instead of rerunning whole trainings (tests/test_train.py covers the trainings end to end).
"""

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from heatedasc.feature_cache import INDEX_COLUMNS, load_feature_cache
from heatedasc.model import ASCNet
from heatedasc.runtime import Runtime
from heatedasc.train import checkpoint, inputs, loop, outputs, recipe
from heatedasc.train.checkpoint import TrainState
from heatedasc.train.maths import make_plateau_scheduler

torch.set_num_threads(1)

SCENES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
          "street_pedestrian", "street_traffic", "tram")
# Two small conv blocks: clips of 5 x 5 are the smallest they take. Parameters, by hand: conv 1->2 (2*9 + 2 = 20),
# BN 2 (4), conv 2->3 (2*3*9 + 3 = 57), BN 3 (6), dense 3->10 (3*10 + 10 = 40): 127 trainable; Keras adds the
# BN moving means and variances (2 + 2 + 3 + 3 = 10): 137.
TINY_MODEL = {"channels": [2, 3], "strides": [1, 1], "kernel_size": 3, "bn_momentum_keras": 0.99, "bn_eps": 1e-3}
TRAIN_CFG = dict(epochs=2, batch_size=4, lr=0.5, rho=0.95, eps=1e-7, weight_decay_l2=1e-5, mixup_alpha=0.2,
                 plateau_factor=0.1, plateau_patience=16, plateau_min_delta=1e-3, monitor="avg_bc",
                 selection="test", holdout_fraction=0.25, holdout_seed=0, deterministic=False, amp=False,
                 amp_dtype="bf16")
EXEC_CFG = dict(device="cpu", channels_last=True, compile=False, compile_mode="default", eval_batch_size=8)


def write_cache(folder: Path, split: str, rows, *, shape=(5, 5), names=None):
    """A feature cache of `rows` ((device, identifier, label) each): float16 clips numbered 0, 1, ... and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    np.save(folder / f"{split}.npy", np.arange(n * shape[0] * shape[1], dtype=np.float16).reshape((n, *shape)))
    devices = [d for d, _, _ in rows]
    labels = [label for _, _, label in rows]
    pd.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "filename": names or [f"audio/{split}-{i}-{d}.wav" for i, d in enumerate(devices)],
        "scene_label": [SCENES[label % 10] for label in labels], "label": np.asarray(labels, dtype=np.int64),
        "device": devices, "identifier": [ident for _, ident, _ in rows], "group": [f"g{i}" for i in range(n)],
    }, columns=list(INDEX_COLUMNS)).to_csv(folder / f"{split}.csv", index=False)
    return folder / f"{split}.npy", folder / f"{split}.csv"


def cache_of(folder: Path, split: str, rows, **kw):
    return load_feature_cache(*write_cache(folder, split, rows, **kw))


def message(exc_info) -> str:
    return str(exc_info.value)


# Eight training rows of four recording locations (interleaved, as a manifest would not sort them):
#   row    0     1     2     3     4     5     6     7
#   dev    a     b     a     c     a     c     b     a
#   loc  loc2  loc0  loc1  loc2  loc3  loc0  loc1  loc0
# tau.select_holdout on these (pinned: the split every run of a sweep shares must not move):
#   fraction 0.5,  seed 7: loc0, loc2 -> rows 0 1 3 5 7 (devices a b c c a)
#   fraction 0.5,  seed 0: loc0, loc1 -> rows 1 2 5 6 7
#   fraction 0.25, seed 0: loc0       -> rows 1 5 7
#   fraction 0.5,  seed 1: loc1, loc3 -> rows 2 4 6     (a a b: no c)
#   fraction 0.5,  seed 4: loc2, loc3 -> rows 0 3 4     (a c a: no b)
EIGHT = [("a", "loc2", 0), ("b", "loc0", 1), ("a", "loc1", 2), ("c", "loc2", 3), ("a", "loc3", 4),
         ("c", "loc0", 5), ("b", "loc1", 6), ("a", "loc0", 7)]


def holdout_cfg(fraction, seed, monitor="avg_bc"):
    return {"selection": "holdout", "holdout_fraction": fraction, "holdout_seed": seed, "monitor": monitor}


# ------------------------------------------------------------------------------ inputs: which rows train


def test_split_rows_holdout_validates_the_held_out_locations(tmp_path):
    train = cache_of(tmp_path, "train", EIGHT)
    fit, val = inputs.split_rows(train, holdout_cfg(0.5, 7))
    assert fit.tolist() == [2, 4, 6] and val.tolist() == [0, 1, 3, 5, 7]
    fit, val = inputs.split_rows(train, holdout_cfg(0.5, 0))  # the seed picks the locations
    assert fit.tolist() == [0, 3, 4] and val.tolist() == [1, 2, 5, 6, 7]
    fit, val = inputs.split_rows(train, holdout_cfg(0.25, 0))  # the fraction sets how many
    assert fit.tolist() == [0, 2, 3, 4, 6] and val.tolist() == [1, 5, 7]


def test_split_rows_avg_bc_needs_b_and_c_rows_in_the_holdout(tmp_path):
    train = cache_of(tmp_path, "train", EIGHT)
    index = train.index_path
    with pytest.raises(ValueError) as info:
        inputs.split_rows(train, holdout_cfg(0.5, 1))
    assert message(info) == (f"train.holdout_fraction: the held-out locations of {index} have no rows of device 'c', "
                             "so train.monitor 'avg_bc' cannot be computed")
    with pytest.raises(ValueError) as info:
        inputs.split_rows(train, holdout_cfg(0.5, 4))
    assert message(info) == (f"train.holdout_fraction: the held-out locations of {index} have no rows of device 'b', "
                             "so train.monitor 'avg_bc' cannot be computed")
    # monitor overall needs no B or C rows: the same split is fine
    fit, val = inputs.split_rows(train, holdout_cfg(0.5, 1, monitor="overall"))
    assert fit.tolist() == [0, 1, 3, 5, 7] and val.tolist() == [2, 4, 6]


@pytest.mark.parametrize("selection", ["test", "last"])
def test_split_rows_test_and_last_train_on_every_row(tmp_path, selection):
    train = cache_of(tmp_path, "train", EIGHT)
    fit, val = inputs.split_rows(train, {**holdout_cfg(0.5, 1), "selection": selection})
    assert fit.tolist() == list(range(8)) and val is None
    one = cache_of(tmp_path / "one", "train", [("a", "loc0", 0)])
    fit, val = inputs.split_rows(one, {"selection": selection, "monitor": "avg_bc"})
    assert fit.tolist() == [0] and val is None
    empty = cache_of(tmp_path / "empty", "train", [])
    with pytest.raises(ValueError) as info:
        inputs.split_rows(empty, {"selection": selection, "monitor": "avg_bc"})
    assert message(info) == f"{empty.index_path}: no training rows"


def test_run_holdout_only_for_the_holdout_selection():
    cfg = {"holdout_fraction": "0.25", "holdout_seed": "3"}  # converted: the record holds numbers
    assert inputs.run_holdout({**cfg, "selection": "holdout"}) == {"fraction": 0.25, "seed": 3}
    assert inputs.run_holdout({**cfg, "selection": "test"}) is None
    assert inputs.run_holdout({**cfg, "selection": "last"}) is None


# ------------------------------------------------------------------------------ inputs: which caches a run accepts

EVAL_ROWS = [("a", "e0", 0), ("b", "e0", 1), ("c", "e1", 9)]


def test_load_run_caches_checks_shapes_devices_and_labels(tmp_path):
    train_files = write_cache(tmp_path / "ok", "train", EIGHT)
    eval_files = write_cache(tmp_path / "ok", "evaluate", EVAL_ROWS)
    train, test = inputs.load_run_caches(*train_files, *eval_files, n_classes=10)
    assert (train.npy_path, train.index_path, test.npy_path, test.index_path) == (*train_files, *eval_files)
    assert train.index["label"].tolist() == list(range(8)) and test.index["label"].tolist() == [0, 1, 9]

    wide = write_cache(tmp_path / "wide", "evaluate", EVAL_ROWS, shape=(5, 6))
    with pytest.raises(ValueError) as info:
        inputs.load_run_caches(*train_files, *wide, n_classes=10)
    assert message(info) == (f"feature shape mismatch: {train_files[0]} has clips of (5, 5) "
                             f"but {wide[0]} has (5, 6)")
    for missing in "abc":
        rows = [r for r in EVAL_ROWS if r[0] != missing]
        files = write_cache(tmp_path / f"no_{missing}", "evaluate", rows)
        with pytest.raises(ValueError) as info:
            inputs.load_run_caches(*train_files, *files, n_classes=10)
        assert message(info) == f"{files[1]}: no rows of device '{missing}' in the evaluation cache"
    # labels lie in 0..n_classes-1: 9 is the largest a 10-class run takes, 0 the smallest
    for where, rows in (("train", [("a", "x", 10)]), ("evaluate", [("a", "e", -1), ("b", "e", 0), ("c", "e", 1)])):
        files = write_cache(tmp_path / f"bad_{where}", where, rows)
        args = (*files, *eval_files) if where == "train" else (*train_files, *files)
        with pytest.raises(ValueError) as info:
            inputs.load_run_caches(*args, n_classes=10)
        assert message(info) == f"{files[1]}: column 'label' must lie in 0..9"
    with pytest.raises(ValueError) as info:
        inputs.load_run_caches(*train_files, *eval_files, n_classes=9)  # test label 9 is one too many
    assert message(info) == f"{eval_files[1]}: column 'label' must lie in 0..8"
    empty = write_cache(tmp_path / "empty", "train", [])  # no labels: nothing to range-check
    assert len(inputs.load_run_caches(*empty, *eval_files, n_classes=10)[0].index) == 0


def write_record(path: Path, **record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_check_cache_origin_compares_the_record_with_the_run(tmp_path):
    cache = cache_of(tmp_path, "train", EIGHT)
    record = cache.npy_path.with_suffix(".provenance.json")
    inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout=None)  # no record: made by hand

    write_record(record, wildcards={"correction": "none", "split": "train"})
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train")
    assert message(info) == (f"{cache.npy_path} was built for correction 'none' (per {record}), "
                             "but this run is for correction 'ref_abc'")
    inputs.check_cache_origin(cache, correction="none", split="train")
    inputs.check_cache_origin(cache, correction="", split="train")  # a run that names no correction
    inputs.check_cache_origin(cache, correction=None, split="train")

    write_record(record, wildcards={"correction": "ref_abc", "split": "evaluate"})
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train")
    assert message(info) == f"{cache.npy_path} holds the 'evaluate' split (per {record}), expected 'train'"
    inputs.check_cache_origin(cache, correction="ref_abc", split="evaluate")

    write_record(record, wildcards={"split": "train"})  # a record that names no correction passes any
    inputs.check_cache_origin(cache, correction="ref_abc", split="train")
    write_record(record, wildcards={"correction": "ref_abc"})  # ... and one that names no split
    inputs.check_cache_origin(cache, correction="ref_abc", split="evaluate")
    record.write_text(json.dumps(["not", "a", "record"]))  # not an object: read as an empty record
    inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.5, "seed": 1})

    record.write_text("{ not json")
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train")
    assert message(info).startswith(f"{record}: unreadable provenance record of {cache.npy_path} (")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def chain_records(root: Path, holdouts, *, first_inputs=None):
    """A chain of job records under the workflow directory `root`: results/features/train.npy (the cache) reads
    results/u1.npz, which reads results/u2.npz, ...; u<k> recorded params {"holdout": holdouts[k-1]} (a key left
    out where that is ...: such a record has no "params", and the last one no "inputs"). Returns the cache's record."""
    names = ["results/features/train.npy"] + [f"results/u{k}.npz" for k in range(1, len(holdouts) + 1)]
    for k, name in enumerate(names):
        record = {"outputs": {"index": {"results/features/train.csv": "i"}, "out": {name: "x"}}}
        if k > 0 and holdouts[k - 1] is not ...:
            record["params"] = {"holdout": holdouts[k - 1]}
        if k + 1 < len(names):
            record["inputs"] = {"in": [names[k + 1]]}
        if k == 0 and first_inputs is not None:
            record["inputs"] = first_inputs
        write_record((root / name).with_suffix(".provenance.json"), **record)
    return json.loads((root / "results/features/train.provenance.json").read_text())


def test_recorded_holdouts_follows_the_inputs_up_four_records(tmp_path):
    root = tmp_path / "wf"
    holds = [{"fraction": 0.1 * k, "seed": k} for k in range(1, 7)]
    record = chain_records(root, holds)
    output = root / "results/features/train.npy"
    rec = {k: root / f"results/u{k}.provenance.json" for k in range(1, 7)}
    assert inputs.recorded_holdouts(record, output) == {rec[k]: holds[k - 1] for k in (1, 2, 3, 4)}  # UPSTREAM_DEPTH
    assert inputs.recorded_holdouts(record, output, depth=1) == {rec[1]: holds[0]}
    assert inputs.recorded_holdouts(record, output, depth=0) == {}
    # a record without a holdout is passed through to its own inputs
    record = chain_records(root, [..., holds[1], ...])
    assert inputs.recorded_holdouts(record, output) == {rec[2]: holds[1]}
    # the output's path must end in one of the names the record gives its outputs, or nothing is found
    assert inputs.recorded_holdouts(record, root / "elsewhere" / "train.npy") == {}
    # an unreadable record upstream is an error naming it and the file it describes
    rec[2].write_text("{ not json")
    with pytest.raises(ValueError) as info:
        inputs.recorded_holdouts(record, output)
    assert message(info).startswith(f"{rec[2]}: unreadable provenance record of {root / 'results/u2.npz'} (")


def test_recorded_holdouts_skips_raw_data_missing_records_and_the_output_itself(tmp_path):
    root = tmp_path / "wf"
    chain_records(root, [{"fraction": 0.5, "seed": 1}])
    absolute = tmp_path / "outside" / "stats.npz"  # an absolute input name is taken as it is
    write_record(absolute.with_suffix(".provenance.json"), params={"holdout": None}, inputs={}, outputs={})
    first = {"raw": ["{data.root}/audio/x.wav", "results/u1.npz"],             # raw data first, then a job's file
             "gone": ["results/never_written.npz", str(absolute)],              # no record first, then one
             "self": ["results/features/train.npy"]}                            # the output itself: skipped
    record = chain_records(root, [{"fraction": 0.5, "seed": 1}], first_inputs=first)
    assert inputs.recorded_holdouts(record, root / "results/features/train.npy") == {
        root / "results/u1.provenance.json": {"fraction": 0.5, "seed": 1},
        absolute.with_suffix(".provenance.json"): None,
    }


def test_check_cache_origin_refuses_fits_of_another_holdout(tmp_path):
    root = tmp_path / "wf"
    cache = cache_of(root / "results" / "features", "train", EIGHT)
    ours = {"fraction": 0.25, "seed": 3}
    record = write_record(cache.npy_path.with_suffix(".provenance.json"),
                          wildcards={"correction": "ref_abc", "split": "train"},
                          inputs={"stats": ["results/stats.npz"]},
                          outputs={"index": {"results/features/train.csv": "i"},
                                   "cache": {"results/features/train.npy": "x"}})
    stats = write_record(root / "results/stats.provenance.json", params={"holdout": ours}, inputs={}, outputs={})
    assert record.is_file()
    inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.25, "seed": 3})
    inputs.check_cache_origin(cache, correction="ref_abc", split="train")  # ...: the holdout is not checked
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout=None)
    assert message(info) == (
        f"{cache.npy_path} was built with the holdout train.holdout_fraction 0.25, train.holdout_seed 3 (per {stats}), "
        "but this run has no holdout (every fold1_train location fitted); rebuild the features with this run's "
        "train.selection, train.holdout_fraction and train.holdout_seed")
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.25, "seed": 4})
    assert "but this run has the holdout train.holdout_fraction 0.25, train.holdout_seed 4; rebuild" in message(info)
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.5, "seed": 3})
    assert "but this run has the holdout train.holdout_fraction 0.5, train.holdout_seed 3; rebuild" in message(info)

    write_record(stats, params={"holdout": None}, inputs={}, outputs={})  # fitted on every location
    inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout=None)
    with pytest.raises(ValueError) as info:
        inputs.check_cache_origin(cache, correction="ref_abc", split="train", holdout=ours)
    assert message(info).startswith(
        f"{cache.npy_path} was built with no holdout (every fold1_train location fitted) (per {stats}), but this run "
        "has the holdout train.holdout_fraction 0.25, train.holdout_seed 3; rebuild")


def test_check_run_caches_checks_both_caches_and_the_files_they_share(tmp_path):
    root = tmp_path / "wf"
    folder = root / "results" / "features"
    train = cache_of(folder, "train", EIGHT)
    test = cache_of(folder, "evaluate", EVAL_ROWS)
    cfg = holdout_cfg(0.25, 3)
    ours = {"fraction": 0.25, "seed": 3}

    def records(train_split="train", test_split="evaluate", train_holdout=ours, test_holdout=ours, test_correction="ref_abc"):
        for cache, split, hold, corr in ((train, train_split, train_holdout, "ref_abc"),
                                         (test, test_split, test_holdout, test_correction)):
            stem = cache.npy_path.stem
            write_record(cache.npy_path.with_suffix(".provenance.json"),
                         wildcards={"correction": corr, "split": split},
                         inputs={"stats": [f"results/stats_{stem}.npz"]},
                         outputs={"cache": {f"results/features/{stem}.npy": "x"}})
            write_record(root / f"results/stats_{stem}.provenance.json", params={"holdout": hold}, inputs={},
                         outputs={})

    records()
    inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)
    with pytest.raises(ValueError, match="was built for correction 'ref_abc'.*this run is for correction 'none'"):
        inputs.check_run_caches(train, test, correction="none", cfg=cfg)
    for kw, culprit in (({"train_holdout": None}, train), ({"test_holdout": None}, test)):
        records(**kw)
        with pytest.raises(ValueError) as info:
            inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)
        assert message(info).startswith(f"{culprit.npy_path} was built with no holdout")
    records(train_holdout=None, test_holdout=None)
    inputs.check_run_caches(train, test, correction="ref_abc", cfg={**cfg, "selection": "test"})
    with pytest.raises(ValueError, match="built with no holdout"):  # the run's own holdout, from its cfg
        inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)
    records(test_correction="none")
    with pytest.raises(ValueError, match=re.escape(f"{test.npy_path} was built for correction 'none'")):
        inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)
    records(train_split="evaluate")
    with pytest.raises(ValueError, match=re.escape(f"{train.npy_path} holds the 'evaluate' split")):
        inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)
    records(test_split="train")
    with pytest.raises(ValueError, match=re.escape(f"{test.npy_path} holds the 'train' split")):
        inputs.check_run_caches(train, test, correction="ref_abc", cfg=cfg)

    records()
    names = ["audio/z.wav", "audio/train-3-c.wav", "audio/train-1-b.wav"]  # two of them training files
    leak = cache_of(root / "leak", "evaluate", EVAL_ROWS, names=names)
    with pytest.raises(ValueError) as info:
        inputs.check_run_caches(train, leak, correction="ref_abc", cfg=cfg)
    assert message(info) == (f"{train.index_path} and {leak.index_path} share 2 file(s) (first: audio/train-1-b.wav); "
                             "the evaluation cache must not hold training files")


# ------------------------------------------------------------------------------ recipe


def test_read_train_config_merges_both_sections_and_names_the_key():
    cfg = recipe.read_train_config({**TRAIN_CFG, "unknown": 1}, EXEC_CFG)
    assert cfg == {**TRAIN_CFG, **EXEC_CFG}
    with pytest.raises(ValueError) as info:
        recipe.read_train_config({k: v for k, v in TRAIN_CFG.items() if k != "rho"}, EXEC_CFG)
    assert message(info) == "train.rho is missing from the training config"
    with pytest.raises(ValueError) as info:
        recipe.read_train_config(TRAIN_CFG, {k: v for k, v in EXEC_CFG.items() if k != "eval_batch_size"})
    assert message(info) == "execution.train.eval_batch_size is missing from the training config"


def test_correction_of_run_dir_reads_the_run_key():
    assert recipe.correction_of_run_dir(Path("results/runs/ref_bc/T2.0/focal/seed1")) == "ref_bc"
    assert recipe.correction_of_run_dir(Path("results/runs/ref_bc/T2.0/focal/seed1/mixup_alpha=0.4")) == "ref_bc"
    assert recipe.correction_of_run_dir(Path("somewhere/else")) == ""


def test_loss_fn_is_the_configured_loss_at_temperature_t():
    z, y = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 1.0]])  # softmax(z) = (1/4, 3/4)
    ce = recipe._loss_fn("ce", 1.0, {"gamma": 2.0, "focal_form": "eq2"})
    assert ce(z, y).item() == pytest.approx(-math.log(0.75))
    ce_t2 = recipe._loss_fn("ce", 2.0, {"gamma": 2.0, "focal_form": "eq2"})  # softmax(z / 2) = (1, √3) / (1 + √3)
    assert ce_t2(z, y).item() == pytest.approx(math.log((1 + math.sqrt(3)) / math.sqrt(3)))
    focal = recipe._loss_fn("focal", 1.0, {"gamma": 2.0, "focal_form": "eq2"})
    assert focal(z, y).item() == pytest.approx(-(0.25 ** 2) * math.log(0.75))
    # soft targets tell the forms apart: eq2 weighs each class, target_prob the mixed probability q = 1/2
    soft = torch.tensor([[0.5, 0.5]])
    eq2 = recipe._loss_fn("focal", 1.0, {"gamma": 1.0, "focal_form": "eq2"})
    target_prob = recipe._loss_fn("focal", 1.0, {"gamma": 1.0, "focal_form": "target_prob"})
    assert eq2(z, soft).item() == pytest.approx(-0.5 * (0.75 * math.log(0.25) + 0.25 * math.log(0.75)))
    assert target_prob(z, soft).item() == pytest.approx(-0.5 * math.log(0.5))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError) as info:
            recipe._loss_fn("ce", bad, {"gamma": 1.0, "focal_form": "eq2"})
        assert message(info) == f"temperature must be > 0, got {bad}"
    with pytest.raises(ValueError) as info:
        recipe._loss_fn("ce", 0.0, {})  # before the loss section
    assert message(info) == "temperature must be > 0, got 0.0"
    assert recipe._loss_fn("ce", 0.5, {"gamma": 1.0, "focal_form": "eq2"}) is not None  # below 1 is fine
    with pytest.raises(ValueError) as info:
        recipe._loss_fn("focal", 1.0, {"gamma": 1.0})
    assert message(info) == "loss.focal_form is missing from the loss config"


def test_probe_model_counts_the_configured_model_and_refuses_small_clips(tmp_path):
    train = cache_of(tmp_path, "train", EIGHT)
    probe = recipe._probe_model(TINY_MODEL, 4, train)
    assert probe.n_classes == 4 and probe.embedding_dim == 3 and probe.classifier.out_features == 4
    # 3 x 5: the second block's kernel is larger than its input; 4 x 5: its output would be empty (2 - 3 + 1 = 0
    # rows), which the meta device computes without complaint but a real convolution refuses
    for shape in ((3, 5), (4, 5), (5, 4)):
        small = cache_of(tmp_path / f"small{shape}", "train", EIGHT, shape=shape)
        with pytest.raises(ValueError) as info:
            recipe._probe_model(TINY_MODEL, 10, small)
        assert message(info) == f"{small.npy_path}: clips of {shape} are too small for the model's conv blocks"
    with pytest.raises(ValueError) as info:
        recipe._probe_model({**TINY_MODEL, "width": 3}, 10, train)
    assert message(info).startswith("model: unexpected key in model config (")


def plan(tmp_path, *, out_dir=None, correction=None, train_cfg=None, **kw):
    folder = tmp_path / "caches"
    train_files = write_cache(folder, "train", EIGHT)
    eval_files = write_cache(folder, "evaluate", EVAL_ROWS)
    args = dict(train_npy=train_files[0], train_index=train_files[1], eval_npy=eval_files[0], eval_index=eval_files[1],
                out_dir=out_dir or tmp_path / "runs" / "ref_bc" / "T2.0" / "focal" / "seed1", temperature=2.0,
                loss="focal", seed=1, model_cfg=TINY_MODEL, loss_cfg={"gamma": 1.0, "focal_form": "eq2"},
                train_cfg={**TRAIN_CFG, **(train_cfg or {})}, execution_cfg=EXEC_CFG, correction=correction)
    return recipe.plan_run(**{**args, **kw}), train_files, eval_files


def test_plan_run_resolves_the_run(tmp_path, monkeypatch):
    from heatedasc.hashing import digest

    keyed = []
    monkeypatch.setattr(recipe, "run_hash", lambda cfg: keyed.append(cfg) or "the-key")
    spec, (train_npy, train_csv), (eval_npy, eval_csv) = plan(tmp_path)
    assert (spec.train.npy_path, spec.train.index_path, spec.test.npy_path, spec.test.index_path) == (
        train_npy, train_csv, eval_npy, eval_csv)
    assert spec.fit_rows.tolist() == list(range(8)) and spec.val_rows is None  # selection test
    assert spec.train_labels.tolist() == list(range(8)) and spec.train_labels.dtype == np.int64
    assert spec.train_devices.tolist() == list("abacacba")
    assert (spec.loss, spec.temperature, spec.seed, spec.correction) == ("focal", 2.0, 1, "ref_bc")
    assert spec.scenes == SCENES and spec.n_classes == 10 and spec.model_cfg == TINY_MODEL
    assert spec.cfg == {**TRAIN_CFG, **EXEC_CFG}
    assert spec.param_counts == (127, 137)
    assert spec.device == torch.device("cpu") and spec.runtime == Runtime(None, False, None)
    assert spec.out_dir == tmp_path / "runs" / "ref_bc" / "T2.0" / "focal" / "seed1" and spec.run_hash == "the-key"
    z, y = torch.tensor([[0.0, 2 * math.log(3.0)]]), torch.tensor([[0.0, 1.0]])  # at T = 2: p = 3/4, focal γ = 1
    assert spec.loss_fn(z, y).item() == pytest.approx(-0.25 * math.log(0.75))
    # what a checkpoint is keyed on (checkpoint.run_hash adds the code): the caches by content and every setting
    assert keyed == [{
        "train_npy": digest(train_npy), "train_index": digest(train_csv),
        "eval_npy": digest(eval_npy), "eval_index": digest(eval_csv),
        "temperature": 2.0, "loss": "focal", "seed": 1, "model": TINY_MODEL,
        "loss_cfg": {"gamma": 1.0, "focal_form": "eq2"}, "train": {**TRAIN_CFG, **EXEC_CFG}, "n_classes": 10,
        "runtime": {"precision": "fp32", "channels_last": False, "torch.compile": "off"},
    }]
    # a named correction wins over the run folder's; holdout selection splits the rows
    spec, _, _ = plan(tmp_path, correction="none", train_cfg=holdout_cfg(0.5, 7))
    assert spec.correction == "none" and spec.fit_rows.tolist() == [2, 4, 6] and spec.val_rows.tolist() == [0, 1, 3, 5, 7]
    spec, _, _ = plan(tmp_path, out_dir=tmp_path / "not-a-run")
    assert spec.correction == ""


def test_plan_run_checks_before_it_plans(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as info:
        plan(tmp_path, loss_cfg={"gamma": -1.0, "focal_form": "eq2"})
    assert message(info) == "loss.gamma must be >= 0, got -1.0"
    with pytest.raises(ValueError) as info:
        plan(tmp_path, train_cfg={"selection": "best"})
    assert message(info) == "train.selection must be one of ('test', 'holdout', 'last'), got 'best'"
    with pytest.raises(ValueError) as info:
        plan(tmp_path, execution_cfg={**EXEC_CFG, "device": "tpu"})
    assert message(info).startswith("execution.train.device must be one of")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as info:
        plan(tmp_path, execution_cfg={**EXEC_CFG, "device": "cuda"})
    assert message(info).startswith("execution.train.device is 'cuda' but no CUDA device is available (")
    with pytest.raises(ValueError, match="no rows of device 'c'"):  # the caches are read and checked
        plan(tmp_path, train_cfg=holdout_cfg(0.5, 1))
    with pytest.raises(ValueError, match="too small for the model's conv blocks"):
        plan(tmp_path, model_cfg={**TINY_MODEL, "channels": [2, 3, 4], "strides": [1, 1, 1]})
    folder = tmp_path / "caches"
    write_record(folder / "train.provenance.json", wildcards={"correction": "none", "split": "train"})
    with pytest.raises(ValueError, match="this run is for correction 'ref_bc'"):
        plan(tmp_path)


# ------------------------------------------------------------------------------ loop: the device data


def tiny_spec(train_rows, test_rows, *, val_rows=None, fit_rows=None, n_classes=4):
    def cache(rows, offset):
        x = (np.arange(len(rows), dtype=np.float32) + offset).reshape(-1, 1, 1) * np.ones((1, 2, 2), np.float32)
        index = pd.DataFrame({"label": [r[2] for r in rows], "device": [r[0] for r in rows],
                              "identifier": [r[1] for r in rows], "filename": [f"f{offset}-{i}" for i in range(len(rows))]})
        return SimpleNamespace(features=x, index=index)

    train = cache(train_rows, 0.0)
    return SimpleNamespace(
        train=train, test=cache(test_rows, 100.0), n_classes=n_classes, device=torch.device("cpu"),
        train_labels=train.index["label"].to_numpy(np.int64), train_devices=train.index["device"].to_numpy(str),
        fit_rows=np.arange(len(train_rows)) if fit_rows is None else np.asarray(fit_rows), val_rows=val_rows)


def test_to_device_validates_on_the_test_cache_or_the_held_out_rows():
    runner = loop.BatchRunner(torch.nn.Identity(), torch.device("cpu"), None, False)
    train_rows = [("a", "l0", 2), ("b", "l1", 0), ("c", "l1", 1), ("b", "l2", 2)]
    test_rows = [("c", "t", 1), ("a", "t", 0)]
    data = loop.to_device(tiny_spec(train_rows, test_rows), runner)
    assert data.x_train.dtype == data.x_test.dtype == torch.float16
    assert data.x_train[:, 0, 0].tolist() == [0, 1, 2, 3] and data.x_test[:, 0, 0].tolist() == [100, 101]
    assert data.onehot.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]  # 4 classes
    assert data.onehot.dtype == torch.float32
    assert data.fit_rows.tolist() == [0, 1, 2, 3]
    assert data.test_labels.tolist() == [1, 0] and data.test_labels.dtype == np.int64
    assert data.test_devices.tolist() == ["c", "a"]
    assert data.val_x is data.x_test and data.val_sel is None
    assert data.val_labels.tolist() == [1, 0] and data.val_devices.tolist() == ["c", "a"]

    spec = tiny_spec(train_rows, test_rows, fit_rows=[0, 2], val_rows=np.array([1, 3]))
    data = loop.to_device(spec, runner)
    assert data.fit_rows.tolist() == [0, 2] and data.val_x is data.x_train and data.val_sel.tolist() == [1, 3]
    assert data.val_labels.tolist() == [0, 2] and data.val_devices.tolist() == ["b", "b"]
    assert data.test_labels.tolist() == [1, 0] and data.test_devices.tolist() == ["c", "a"]  # the test set is kept


def test_new_train_state_builds_the_run_from_its_seed_and_settings(monkeypatch):
    cfg = {**TRAIN_CFG, "lr": 0.25, "rho": 0.9, "eps": 1e-6, "plateau_factor": 0.3, "plateau_patience": 4,
           "plateau_min_delta": 0.02}
    spec = SimpleNamespace(cfg=cfg, seed=3, n_classes=4, model_cfg=TINY_MODEL, device=torch.device("cpu"),
                           runtime=Runtime(None, False, None))
    state = loop.new_train_state(spec)
    torch.manual_seed(3)
    expected = ASCNet(n_classes=4, **TINY_MODEL)
    assert isinstance(state.model, ASCNet) and state.model.n_classes == 4 and len(state.model.blocks) == 2
    assert all(torch.equal(a, b) for a, b in zip(state.model.state_dict().values(), expected.state_dict().values()))
    group = state.optimizer.param_groups[0]
    assert (group["lr"], group["rho"], group["eps"], group["weight_decay"]) == (0.25, 0.9, 1e-6, 0.0)
    assert [id(p) for p in group["params"]] == [id(p) for p in state.model.parameters()]
    sched = state.scheduler
    assert sched.optimizer is state.optimizer and sched.mode == "max" and sched.threshold_mode == "abs"
    assert (sched.factor, sched.patience, sched.threshold) == (0.3, 3, 0.02)  # Keras patience 4 is torch's 3
    assert not state.scaler.is_enabled()
    assert torch.equal(state.torch_gen.get_state(), torch.Generator().manual_seed(3).get_state())
    assert state.np_rng.bit_generator.state == np.random.default_rng([3, 0x313C]).bit_generator.state
    assert (state.epoch, state.history, state.best) == (0, [], {"epoch": 0, "value": -math.inf, "state": None})
    conv2 = state.model.blocks[1][0].weight  # [3, 2, 3, 3]: the layouts differ
    assert conv2.is_contiguous() and not conv2.is_contiguous(memory_format=torch.channels_last)

    spec.runtime = Runtime(None, True, None)
    conv2 = loop.new_train_state(spec).model.blocks[1][0].weight
    assert conv2.is_contiguous(memory_format=torch.channels_last) and not conv2.is_contiguous()
    # the gradient scaler is for fp16 autocast only (its CUDA check stubbed: it is CUDA's)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    for amp_dtype, enabled in ((None, False), (torch.bfloat16, False), (torch.float16, True)):
        spec.runtime = Runtime(amp_dtype, False, None)
        assert loop.new_train_state(spec).scaler.is_enabled() is enabled, amp_dtype


# ------------------------------------------------------------------------------ loop: one epoch, the epochs


# Four validation rows (device, label): (a, 0), (b, 1), (c, 2), (c, 0). Predictions per epoch and what they score:
#   epoch  predictions   a  b  c    avg_bc  overall
#     1    0 0 0 0       1  0  1/2   1/4     1/2
#     2    1 1 2 1       0  1  1/2   3/4     1/2
#     3    0 1 2 1       1  1  1/2   3/4     3/4
#     4    0 0 2 0       1  0  1     1/2     3/4
#     5    1 1 1 1       0  1  0     1/2     1/4
VAL_PREDS = [[0, 0, 0, 0], [1, 1, 2, 1], [0, 1, 2, 1], [0, 0, 2, 0], [1, 1, 1, 1]]
ACCS = [(1, 0, 0.5, 0.25, 0.5), (0, 1, 0.5, 0.75, 0.5), (1, 1, 0.5, 0.75, 0.75), (1, 0, 1, 0.5, 0.75),
        (0, 1, 0, 0.5, 0.25)]


class FakeRunner:
    """infer() returns the next epoch's VAL_PREDS as one-hot logits and records what it was asked."""

    def __init__(self):
        self.calls = []

    def infer(self, features, rows, batch_size):
        self.calls.append((features, rows, batch_size))
        preds = VAL_PREDS[len(self.calls) - 1]
        return np.eye(3, dtype=np.float32)[preds], np.zeros((len(preds), 2), np.float32)


def run_epochs(monkeypatch, *, selection, monitor, epochs=5):
    """Five epochs of run_epoch with train_epoch stubbed (it sets the weight to the epoch number and returns a loss
    of epoch / 2), a FakeRunner, a real plateau schedule (factor 1/2, Keras patience 1, min_delta 0, lr 1)."""
    trained = []

    def fake_train_epoch(model, optimizer, scaler, runner, x_train, onehot, order, **kw):
        trained.append({"model": model, "optimizer": optimizer, "scaler": scaler, "runner": runner,
                        "x_train": x_train, "onehot": onehot, "order": order.tolist(), **kw})
        model.weight.data.fill_(float(len(trained)))
        return len(trained) / 2

    monkeypatch.setattr(loop, "train_epoch", fake_train_epoch)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = make_plateau_scheduler(optimizer, factor=0.5, patience=1, min_delta=0.0)
    state = TrainState(model, optimizer, scheduler, "scaler", torch.Generator().manual_seed(5), np.random.default_rng(0))
    spec = SimpleNamespace(cfg={"batch_size": 3, "mixup_alpha": 0.2, "weight_decay_l2": 1e-4, "eval_batch_size": 7,
                                "monitor": monitor, "selection": selection, "epochs": epochs},
                           loss_fn="the loss")
    data = SimpleNamespace(fit_rows=torch.tensor([0, 2, 3, 5, 7, 8]), x_train="x_train", onehot="onehot",
                           val_x="val_x", val_sel=np.array([1, 4, 6, 9]), val_labels=np.array([0, 1, 2, 0]),
                           val_devices=np.array(["a", "b", "c", "c"]))
    runner = FakeRunner()
    rows, bests = [], []
    for _ in range(epochs):
        rows.append(loop.run_epoch(spec, state, runner, data))
        bests.append((state.best["epoch"], state.best["value"], float(state.best["state"]["weight"].item())))
    return state, rows, bests, trained, runner, spec, data


@pytest.mark.parametrize("selection", ["test", "holdout"])
def test_run_epoch_keeps_the_first_best_epoch_of_the_monitor(monkeypatch, selection):
    # avg_bc: 1/4, 3/4, 3/4, 1/2, 1/2 -> epoch 2 (epoch 3 only ties it)
    state, rows, bests, *_ = run_epochs(monkeypatch, selection=selection, monitor="avg_bc")
    assert bests == [(1, 0.25, 1.0), (2, 0.75, 2.0), (2, 0.75, 2.0), (2, 0.75, 2.0), (2, 0.75, 2.0)]
    assert state.model.weight.item() == 5.0  # the kept state is a copy, not the model's own tensors
    assert state.best["state"]["weight"].requires_grad is False
    # overall: 1/2, 1/2, 3/4, 3/4, 1/4 -> epoch 3 (epoch 4 only ties it)
    state, rows, bests, *_ = run_epochs(monkeypatch, selection=selection, monitor="overall")
    assert bests == [(1, 0.5, 1.0), (1, 0.5, 1.0), (3, 0.75, 3.0), (3, 0.75, 3.0), (3, 0.75, 3.0)]


@pytest.mark.parametrize("monitor", ["avg_bc", "overall"])
def test_run_epoch_last_selection_keeps_every_epoch_in_turn(monkeypatch, monitor):
    state, rows, bests, *_ = run_epochs(monkeypatch, selection="last", monitor=monitor)
    k = 3 if monitor == "avg_bc" else 4
    assert bests == [(e, ACCS[e - 1][k], float(e)) for e in range(1, 6)]


def test_run_epoch_feeds_the_plateau_schedule_the_monitor_and_records_the_epochs_lr(monkeypatch):
    # Keras patience 1, factor 1/2: every epoch that does not beat the best so far halves the LR after it.
    # avg_bc 1/4, 3/4, 3/4, 1/2, 1/2: cuts after epochs 3, 4, 5. The row holds the LR the epoch trained with.
    state, rows, *_ = run_epochs(monkeypatch, selection="test", monitor="avg_bc")
    assert [r["lr"] for r in rows] == [1.0, 1.0, 1.0, 0.5, 0.25] and state.optimizer.param_groups[0]["lr"] == 0.125
    # overall 1/2, 1/2, 3/4, 3/4, 1/4: cuts after epochs 2, 4, 5
    state, rows, *_ = run_epochs(monkeypatch, selection="test", monitor="overall")
    assert [r["lr"] for r in rows] == [1.0, 1.0, 0.5, 0.5, 0.25] and state.optimizer.param_groups[0]["lr"] == 0.125


def test_run_epoch_rows_history_and_log(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="heatedasc.train"):
        state, rows, _, trained, runner, spec, data = run_epochs(monkeypatch, selection="test", monitor="avg_bc")
    assert state.history == rows and state.epoch == 5
    for epoch, (row, (a, b, c, avg_bc, overall)) in enumerate(zip(rows, ACCS), start=1):
        row = dict(row)
        assert 0 <= row.pop("seconds") < 60
        assert row == {"epoch": epoch, "train_loss": epoch / 2, "lr": row["lr"], "val_acc_a": a, "val_acc_b": b,
                       "val_acc_c": c, "val_avg_bc": avg_bc, "val_overall": overall}
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/5 loss 0.5000 lr 1 val a 1.000 b 0.000 c 0.500 avg_bc 0.250 overall 0.500",
        "epoch 2/5 loss 1.0000 lr 1 val a 0.000 b 1.000 c 0.500 avg_bc 0.750 overall 0.500",
        "epoch 3/5 loss 1.5000 lr 1 val a 1.000 b 1.000 c 0.500 avg_bc 0.750 overall 0.750",
        "epoch 4/5 loss 2.0000 lr 0.5 val a 1.000 b 0.000 c 1.000 avg_bc 0.500 overall 0.750",
        "epoch 5/5 loss 2.5000 lr 0.25 val a 0.000 b 1.000 c 0.000 avg_bc 0.500 overall 0.250",
    ]
    # each epoch trains on every fit row once, in the order the run's own generator shuffles them
    gen = torch.Generator().manual_seed(5)
    fit = torch.tensor([0, 2, 3, 5, 7, 8])
    assert [t["order"] for t in trained] == [fit[torch.randperm(6, generator=gen)].tolist() for _ in range(5)]
    for t in trained:
        assert (t["model"], t["optimizer"], t["scaler"], t["runner"]) == (state.model, state.optimizer, "scaler", runner)
        assert (t["x_train"], t["onehot"], t["batch_size"], t["mixup_alpha"]) == ("x_train", "onehot", 3, 0.2)
        assert (t["np_rng"], t["loss_fn"], t["weight_decay_l2"]) == (state.np_rng, "the loss", 1e-4)
    # and validates on the validation rows, in evaluation batches
    assert [(f, r.tolist(), bs) for f, r, bs in runner.calls] == [("val_x", [1, 4, 6, 9], 7)] * 5


def test_fit_runs_the_remaining_epochs_with_a_checkpoint_after_each(monkeypatch, tmp_path):
    events = []

    def fake_run_epoch(spec_, state, runner, data):
        state.epoch += 1
        events.append(("epoch", state.epoch, spec_, runner, data))
        return {"train_loss": 1.0, "lr": 0.5, "val_avg_bc": 0.5, "val_overall": 0.25}

    monkeypatch.setattr(loop, "run_epoch", fake_run_epoch)
    monkeypatch.setattr(loop, "save_checkpoint", lambda state, path, key: events.append(("ckpt", state.epoch, path, key)))
    spec = SimpleNamespace(cfg={"epochs": 4, "monitor": "avg_bc"}, out_dir=tmp_path / "run", run_hash="key")
    ckpt = tmp_path / "last.pt"

    def fit(start, stop_after_epoch):
        events.clear()
        state = SimpleNamespace(epoch=start)
        done = loop.fit(spec, state, "runner", "data", ckpt, progress=False, stop_after_epoch=stop_after_epoch)
        return done, state.epoch, [e[:2] for e in events]

    every = [("epoch", 2), ("ckpt", 2), ("epoch", 3), ("ckpt", 3), ("epoch", 4), ("ckpt", 4)]
    assert fit(1, None) == (True, 4, every)  # resumed after epoch 1: epochs 2..4
    assert events[0][2:] == (spec, "runner", "data") and events[1][2:] == (ckpt, "key")
    assert fit(1, 3) == (False, 3, every[:4])  # stopped after epoch 3's checkpoint, as a kill would
    assert fit(1, 4) == (True, 4, every)  # stopping after the last epoch is finishing
    assert fit(1, 1) == (True, 4, every)  # an epoch already done: nothing to stop at
    assert fit(4, None) == (True, 4, [])  # all done: no epoch, no checkpoint
    assert fit(0, None)[2][:2] == [("epoch", 1), ("ckpt", 1)]


# ------------------------------------------------------------------------------ loop: the batches of an epoch


class RecordingRunner:
    """batch_loss() of batch k (1, 2, ...) is k·(1 + w) at w = 0: loss k, gradient k, both known by hand."""

    def __init__(self, w):
        self.w, self.calls = w, []

    def batch_loss(self, x, y, lam, partner, loss_fn, weight_decay_l2):
        self.calls.append((x.tolist(), y.tolist(), lam, partner, loss_fn, weight_decay_l2))
        return float(len(self.calls)) * (1 + self.w.sum())


def epoch_of(order, *, mixup_alpha, batch_size=2, rng=None):
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w], lr=1.0)
    steps = []
    optimizer.step = lambda *a, **k: steps.append(w.grad.clone())  # what the scaler steps with
    runner = RecordingRunner(w)
    x = torch.arange(10.0) * 10
    onehot = torch.arange(10.0) + 0.5
    loss = loop.train_epoch(torch.nn.Linear(1, 1), optimizer, torch.amp.GradScaler("cuda", enabled=False), runner, x,
                            onehot, torch.tensor(order), batch_size=batch_size, mixup_alpha=mixup_alpha,
                            np_rng=rng or np.random.default_rng(0), loss_fn="the loss", weight_decay_l2=0.25)
    return loss, runner.calls, steps


def test_train_epoch_walks_the_order_in_batches_and_averages_the_loss_per_row():
    # 5 rows in batches of 2, 2, 1 with losses 1, 2, 3: (1·2 + 2·2 + 3·1) / 5
    loss, calls, steps = epoch_of([7, 1, 4, 0, 9], mixup_alpha=0.0)
    assert loss == pytest.approx(9 / 5)
    assert [(c[0], c[1]) for c in calls] == [([70.0, 10.0], [7.5, 1.5]), ([40.0, 0.0], [4.5, 0.5]), ([90.0], [9.5])]
    assert all(c[2] is None and c[3] is None and c[4:] == ("the loss", 0.25) for c in calls)  # no mixup
    assert [s.tolist() for s in steps] == [[1.0], [2.0], [3.0]]  # one step per batch, on that batch's gradient
    assert epoch_of([3], mixup_alpha=0.0)[0] == 1.0  # one row: its loss
    assert epoch_of([], mixup_alpha=0.2) == (0.0, [], [])  # nothing to train: no steps, a zero loss


def test_train_epoch_draws_the_epochs_mixup_once_and_slices_it_per_batch():
    from heatedasc.train.maths import draw_epoch_mixup

    rng = np.random.default_rng(4)
    loss, calls, _ = epoch_of([7, 1, 4, 0, 9], mixup_alpha=0.3, rng=rng)
    lam, partner = draw_epoch_mixup(np.random.default_rng(4), 5, 2, 0.3)
    assert loss == pytest.approx(9 / 5)
    for (start, stop), call in zip(((0, 2), (2, 4), (4, 5)), calls):
        assert call[2].dtype == torch.float32 and call[3].dtype == torch.int64
        assert call[2].tolist() == lam[start:stop].tolist() and call[3].tolist() == partner[start:stop].tolist()
    after = np.random.default_rng(4)
    draw_epoch_mixup(after, 5, 2, 0.3)
    assert rng.bit_generator.state == after.bit_generator.state  # the run's generator moved by exactly one epoch


# ------------------------------------------------------------------------------ loop: the batch runner

TINY_EVAL = {"channels": [4], "strides": [1], "kernel_size": 3}


def test_batch_runner_prepare_and_infer_select_the_rows():
    torch.manual_seed(0)
    model = ASCNet(n_classes=3, **TINY_EVAL)
    runner = loop.BatchRunner(model, torch.device("cpu"), None, False)
    cache = np.random.default_rng(0).normal(size=(7, 3, 3)).astype(np.float16)
    features = runner.to_device_features(cache)
    assert features.dtype == torch.float16 and features.shape == (7, 3, 3)
    cache[0] = 0  # a copy: the (memory-mapped, read-only) cache is never shared with the training tensors
    assert features[0].abs().sum() > 0
    prepared = runner.prepare(features)
    assert prepared.shape == (7, 1, 3, 3) and prepared.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        all_logits, all_emb = (t.numpy() for t in model.forward_with_embedding(prepared))
    assert len(np.unique(all_logits.round(4), axis=0)) == 7  # every row tells its own logits
    model.train()
    logits, emb = runner.infer(features, None, 3)  # batches of 3, 3, 1
    assert not model.training  # evaluation mode
    assert np.allclose(logits, all_logits, rtol=0, atol=1e-6) and np.allclose(emb, all_emb, rtol=0, atol=1e-6)
    assert logits.dtype == emb.dtype == np.float32 and logits.shape == (7, 3) and emb.shape == (7, 4)
    logits, emb = runner.infer(features, np.array([5, 0, 2]), 2)
    assert np.allclose(logits, all_logits[[5, 0, 2]], rtol=0, atol=1e-6)
    assert np.allclose(emb, all_emb[[5, 0, 2]], rtol=0, atol=1e-6)
    logits, emb = runner.infer(features, np.array([], dtype=np.int64), 2)
    assert logits.shape == (0, 3) and emb.shape == (0, 4) and logits.dtype == emb.dtype == np.float32
    cl = loop.BatchRunner(model, torch.device("cpu"), None, True).prepare(features)
    assert torch.equal(cl, prepared) and cl.is_contiguous(memory_format=torch.channels_last)
    for amp_dtype in (torch.bfloat16, torch.float16):
        amp = loop.BatchRunner(model, torch.device("cpu"), amp_dtype, False)
        assert amp.prepare(features).dtype == torch.float16  # autocast casts; prepare leaves the cache's dtype
        with amp.autocast():
            assert torch.get_autocast_dtype("cpu") == amp_dtype and torch.is_autocast_enabled("cpu")
    with runner.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_batch_runner_batch_loss_is_the_loss_plus_the_l2_term_with_or_without_mixup():
    from heatedasc.losses import make_loss
    from heatedasc.train.maths import l2_penalty, mixup_batch

    torch.manual_seed(0)
    model = ASCNet(n_classes=3, **TINY_EVAL)
    runner = loop.BatchRunner(model, torch.device("cpu"), None, False)
    x = runner.to_device_features((np.arange(4 * 9, dtype=np.float64).reshape(4, 3, 3) - 17) / 7)
    y = torch.eye(3)[[0, 2, 1, 1]]
    loss_fn = make_loss("ce", temperature=2.0)
    model.eval()  # batch statistics aside, the same forward pass as the runner's
    xb = x.float().unsqueeze(1)
    plain = loss_fn(model(xb), y) + l2_penalty(model, 0.5)
    assert runner.batch_loss(x, y, None, None, loss_fn, 0.5).item() == pytest.approx(plain.item(), rel=1e-6)
    lam, partner = torch.tensor([0.25, 1.0, 0.5, 0.0]), torch.tensor([1, 0, 3, 2])
    xm, ym = mixup_batch(xb, y, lam, partner)
    mixed = loss_fn(model(xm), ym) + l2_penalty(model, 0.5)
    assert runner.batch_loss(x, y, lam, partner, loss_fn, 0.5).item() == pytest.approx(mixed.item(), rel=1e-6)
    assert abs(mixed.item() - plain.item()) > 1e-3 and l2_penalty(model, 0.5).item() > 1e-3


def test_batch_runner_mixes_in_the_batchs_dtype(monkeypatch):
    from heatedasc.losses import make_loss

    seen = []

    def recording_mixup(xb, y, lam, partner):
        seen.append((xb.dtype, lam.dtype))
        return xb, y.clone()

    monkeypatch.setattr(loop, "mixup_batch", recording_mixup)
    torch.manual_seed(0)
    model = ASCNet(n_classes=3, **TINY_EVAL)
    x = torch.zeros(2, 3, 3, dtype=torch.float16)
    y, lam, partner = torch.eye(3)[[0, 1]], torch.tensor([0.5, 0.25]), torch.tensor([1, 0])
    loss_fn = make_loss("ce", temperature=1.0)
    loop.BatchRunner(model, torch.device("cpu"), None, False).batch_loss(x, y, lam, partner, loss_fn, 0.0)
    loop.BatchRunner(model, torch.device("cpu"), torch.bfloat16, False).batch_loss(x, y, lam, partner, loss_fn, 0.0)
    # fp32: the cache's float16 rows are cast first; under autocast they stay float16, and so does λ
    assert seen == [(torch.float32, torch.float32), (torch.float16, torch.float16)]


def test_batch_runner_wraps_both_steps_when_a_mode_is_set_and_names_the_failure_of_one(monkeypatch):
    """torch.compile is stubbed here, so this runs under mutation testing too (whose selection leaves out the tests
    named after compiling: mutmut's trampolines cannot be traced)."""
    import torch._dynamo.exc

    compiled, marks = [], []
    monkeypatch.setattr(loop.runtime, "compile_fn", lambda fn, mode: compiled.append((fn, mode)) or fn)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    eager = loop.BatchRunner(torch.nn.Identity(), torch.device("cpu"), None, False)
    assert compiled == [] and eager.compile_mode is None
    assert eager._run(lambda a, b: a + b, "the step", 2, 3) == 5 and marks == []  # eager: no CUDA-graph step marks
    runner = loop.BatchRunner(torch.nn.Identity(), torch.device("cpu"), None, False, "reduce-overhead")
    assert compiled == [(runner._batch_loss, "reduce-overhead"), (runner._forward, "reduce-overhead")]
    assert runner.compile_mode == "reduce-overhead"
    assert runner._run(lambda a, b: a + b, "the step", 2, 3) == 5 and marks == [1]

    def failing(*args):
        raise torch._dynamo.exc.TorchRuntimeError(" no C++ compiler ")

    with pytest.raises(RuntimeError) as info:
        runner._run(failing, "evaluation forward pass")
    assert message(info) == ("execution.train.compile: torch.compile failed on the evaluation forward pass "
                             "(TorchRuntimeError: no C++ compiler); set execution.train.compile: false to train "
                             "without it")
    assert isinstance(info.value.__cause__, torch._dynamo.exc.TorchRuntimeError)
    plain = RuntimeError("a shape error of the computation")

    def computation_error(*args):
        raise plain

    with pytest.raises(RuntimeError) as info:
        runner._run(computation_error, "training step")
    assert info.value is plain  # not a compile error: passed on as it is
    # the public steps go through _run, named
    for r in (eager, runner):
        seen = []

        def fake_run(step, what, *args, _seen=seen):
            _seen.append((step, what, args))
            return torch.zeros(len(args[0]), 3), torch.zeros(len(args[0]), 2)

        monkeypatch.setattr(r, "_run", fake_run)
        r.model = ASCNet(n_classes=3, **TINY_EVAL)
        r.batch_loss("x", "y", "lam", "partner", "fn", 0.5)
        features = torch.zeros(1, 3, 3)
        r.infer(features, None, 4)
        assert seen[0] == (r._loss_step, "training step", ("x", "y", "lam", "partner", "fn", 0.5))
        assert seen[1][:2] == (r._forward_step, "evaluation forward pass") and torch.equal(seen[1][2][0], features)


# ------------------------------------------------------------------------------ checkpoint


def test_config_hash_and_run_hash_are_sha256_of_sorted_json(monkeypatch):
    expected = hashlib.sha256(b'{"a": "/x/y", "b": [1, 2.5]}').hexdigest()
    assert checkpoint.config_hash({"b": [1, 2.5], "a": Path("/x/y")}) == expected  # keys sorted, Paths as text
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: "c0de")
    assert checkpoint.run_hash({"z": 1, "b": 2}) == hashlib.sha256(b'{"b": 2, "code": "c0de", "z": 1}').hexdigest()


def test_code_fingerprint_is_the_training_packages_import_closure():
    from heatedasc.codedeps import module_closure_digest

    assert checkpoint.code_fingerprint() == module_closure_digest("train") != module_closure_digest("report")


def small_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=0.5)
    scheduler = make_plateau_scheduler(optimizer, factor=0.5, patience=1, min_delta=0.0)
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False),
                      torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def test_rng_snapshot_and_restore_cover_every_generator(monkeypatch):
    gen, rng = torch.Generator().manual_seed(1), np.random.default_rng(1)
    snap = checkpoint.rng_snapshot(gen, rng)
    assert set(snap) == {"torch_gen", "np_rng", "torch_global"}  # no GPU here: no CUDA states
    expected = (torch.rand(3, generator=gen).tolist(), rng.random(3).tolist(), torch.rand(3).tolist())
    checkpoint.rng_restore(snap, gen, rng)
    assert (torch.rand(3, generator=gen).tolist(), rng.random(3).tolist(), torch.rand(3).tolist()) == expected
    # with a GPU, the CUDA generators go with them
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda states"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    snap = checkpoint.rng_snapshot(gen, rng)
    assert snap["cuda"] == ["cuda states"]
    checkpoint.rng_restore(snap, gen, rng)
    assert restored == [["cuda states"]]
    checkpoint.rng_restore({k: v for k, v in snap.items() if k != "cuda"}, gen, rng)  # a CPU run's checkpoint
    assert restored == [["cuda states"]]


def test_a_checkpoint_resumes_the_whole_state(tmp_path, caplog, monkeypatch):
    # an fp16 run's gradient scaler has a state too (its CUDA check stubbed: the scaler is CUDA's)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    state = small_state(0)
    state.scaler = torch.amp.GradScaler("cuda", enabled=True)
    scaler_state = {"scale": 1024.0, "growth_factor": 4.0, "backoff_factor": 0.25, "growth_interval": 7,
                    "_growth_tracker": 3}
    state.scaler.load_state_dict(scaler_state)
    x = torch.tensor([[1.0, -2.0]])
    for value in (0.5, 0.25):  # two epochs: Adadelta has state, the schedule has cut the LR once
        state.optimizer.zero_grad()
        state.model(x).sum().backward()
        state.optimizer.step()
        state.scheduler.step(value)
    state.torch_gen.manual_seed(11)
    torch.rand(2, generator=state.torch_gen)
    state.np_rng.random(3)
    state.epoch = 2
    state.history = [{"epoch": 1, "train_loss": 1.5}, {"epoch": 2, "train_loss": 1.25}]
    state.best = {"epoch": 1, "value": 0.5, "state": {k: v.clone() for k, v in state.model.state_dict().items()}}
    path = tmp_path / "resume" / "last.pt"
    path.parent.mkdir()
    checkpoint.save_checkpoint(state, path, "key-1")
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt) == {"config_hash", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "history", "best"}
    assert ckpt["config_hash"] == "key-1" and ckpt["epoch"] == 2

    fresh = small_state(5)
    fresh.scaler = torch.amp.GradScaler("cuda", enabled=True)
    with caplog.at_level(logging.INFO, logger="heatedasc.train"):
        checkpoint.resume(fresh, path, "key-1", tmp_path / "run")
    assert fresh.scaler.state_dict() == scaler_state
    assert [r.getMessage() for r in caplog.records] == [f"resuming {tmp_path / 'run'} after epoch 2"]
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), state.model.state_dict().values()))
    assert fresh.optimizer.param_groups[0]["lr"] == 0.25
    resumed, saved = fresh.optimizer.state_dict(), state.optimizer.state_dict()
    assert resumed["param_groups"] == saved["param_groups"] and resumed["state"].keys() == saved["state"].keys()
    for k, per_param in saved["state"].items():
        assert all(torch.equal(resumed["state"][k][name], value) for name, value in per_param.items())
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    assert (fresh.epoch, fresh.history) == (2, state.history)
    assert fresh.best["epoch"] == 1 and fresh.best["value"] == 0.5
    assert all(torch.equal(fresh.best["state"][k], v) for k, v in state.best["state"].items())
    assert torch.equal(torch.rand(4, generator=fresh.torch_gen), torch.rand(4, generator=state.torch_gen))
    assert fresh.np_rng.random() == state.np_rng.random()

    # a checkpoint of another run is ignored: the run starts over
    other = small_state(5)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="heatedasc.train"):
        checkpoint.resume(other, path, "key-2", tmp_path / "run")
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring {path}: it belongs to a different run configuration; starting over"]
    assert all(torch.equal(before[k], v) for k, v in other.model.state_dict().items())
    assert (other.epoch, other.history, other.best["epoch"]) == (0, [], 0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="heatedasc.train"):
        checkpoint.resume(other, tmp_path / "none.pt", "key-1", tmp_path / "run")  # no checkpoint: nothing to do
    assert caplog.records == [] and other.epoch == 0


def test_a_new_state_starts_before_epoch_one():
    assert checkpoint._new_best() == {"epoch": 0, "value": -math.inf, "state": None}
    state = small_state()
    assert (state.epoch, state.history, state.best) == (0, [], {"epoch": 0, "value": -math.inf, "state": None})
    assert small_state().history is not state.history and small_state().best is not state.best


# ------------------------------------------------------------------------------ outputs


def test_selection_note_says_how_the_epoch_was_chosen():
    assert outputs.selection_note("test", "avg_bc", 0.1) == (
        "The epoch was chosen by the test set (fold1_evaluate avg_bc accuracy), which also drove the learning-rate "
        "schedule, as in the paper; this leaks the test set into model selection, so the reported accuracies are "
        "optimistic.")
    assert outputs.selection_note("holdout", "overall", 0.25) == (
        "The epoch was chosen by overall accuracy on a validation split of 0.25 of the fold1_train recording "
        "locations, which the spectrum correction and the standardisation also left out; the test set "
        "(fold1_evaluate) was not used for selection or the learning-rate schedule.")
    assert outputs.selection_note("last", "avg_bc", 0.1) == (
        "The last epoch was kept (no epoch selection), but the learning-rate schedule was driven by the test set "
        "(fold1_evaluate avg_bc accuracy), as in the paper; this leaks the test set into training, so the reported "
        "accuracies may be optimistic (use selection 'holdout' for an untouched test set).")


# Nine test rows of four classes (s3 has none) and what the model predicts:
#   row     0  1  2  3  4  5  6  7  8
#   device  a  a  b  b  c  c  c  a  a
#   label   0  1  2  0  1  0  0  1  2
#   pred    0  2  2  1  1  0  2  1  2
#   right   y  n  y  n  y  y  n  y  y
# acc a 3/4, b 1/2, c 2/3, avg_bc 7/12, overall 6/9; class accuracy s0 2/4, s1 2/3, s2 2/2, s3 none.
TEST_DEVICES = np.array(list("aabbcccaa"))
TEST_LABELS = np.array([0, 1, 2, 0, 1, 0, 0, 1, 2])
TEST_PRED = np.array([0, 2, 2, 1, 1, 0, 2, 1, 2])
FOUR = ("s0", "s1", "s2", "s3")


def expected_metrics(selection="test"):
    return {
        "correction": "ref_abc", "temperature": 2.0, "loss": "focal", "seed": 1,
        "acc_a": 0.75, "acc_b": 0.5, "acc_c": pytest.approx(2 / 3), "avg_bc": pytest.approx(7 / 12),
        "acc_overall": pytest.approx(2 / 3),
        "n_test": {"a": 4, "b": 2, "c": 3},
        "class_acc": {"s0": 0.5, "s1": pytest.approx(2 / 3), "s2": 1.0, "s3": None},
        "confusion": {"a": [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
                      "b": [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
                      "c": [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]},
        "ece": pytest.approx(0.9 - 2 / 3, abs=1e-6),  # every row in one bin: confidence 0.9, accuracy 6/9
        "params_trainable": 54, "params_keras": 58, "best_epoch": 2, "epochs_run": 3, "selection": selection,
        "selection_note": outputs.selection_note(selection, "avg_bc", 0.25), "monitor": "avg_bc",
        "best_monitor_value": 0.625,
    }


def outputs_spec(tmp_path, *, val_rows=None, selection="test"):
    train_index = pd.DataFrame({"identifier": ["locB", "locA", "locC", "locA", "locB"]})
    test_index = pd.DataFrame({"filename": [f"audio/t{i}.wav" for i in range(9)]})
    return SimpleNamespace(
        n_classes=4, scenes=FOUR, correction="ref_abc", temperature=2.0, loss="focal", seed=1, param_counts=(54, 58),
        cfg={"selection": selection, "monitor": "avg_bc", "holdout_fraction": 0.25, "eval_batch_size": 7},
        val_rows=val_rows, train=SimpleNamespace(index=train_index), test=SimpleNamespace(index=test_index),
        out_dir=tmp_path / "runs" / "ref_abc" / "run", model_cfg={"channels": [2]}, train_labels=np.array([3, 2, 1, 0, 1]),
        train_devices=np.array(list("abcab"), dtype=object))


def best_and_state(model_state=None):
    history = [{"epoch": e, "train_loss": 2.0 - e / 4, "lr": 1.0 / e, "val_acc_a": 0.25 * e, "val_acc_b": 0.5,
                "val_acc_c": 0.75, "val_avg_bc": 0.625, "val_overall": 0.5, "seconds": 2.5 + e} for e in (1, 2, 3)]
    state = SimpleNamespace(best={"epoch": 2, "value": np.float64(0.625), "state": model_state}, history=history)
    return state


def logits_for(pred):
    """z = 2·ln 27 on the predicted class, 0 elsewhere: softmax(z / 2) is 27/30 = 0.9 there and 1/30 elsewhere."""
    z = np.zeros((len(pred), 4), np.float32)
    z[np.arange(len(pred)), pred] = 2 * math.log(27)
    return z


def test_run_metrics_by_hand(tmp_path):
    spec = outputs_spec(tmp_path)
    data = SimpleNamespace(test_labels=TEST_LABELS, test_devices=TEST_DEVICES)
    probs = np.full((9, 4), 1 / 30, np.float32)
    probs[np.arange(9), TEST_PRED] = 0.9
    metrics = outputs.run_metrics(spec, best_and_state(), TEST_PRED, probs, data)
    assert metrics == expected_metrics()
    assert list(metrics) == list(expected_metrics())  # metrics.json's key order
    assert {type(n) for d in "abc" for row in metrics["confusion"][d] for n in row} == {int}  # counts, not 1.0
    assert type(metrics["best_epoch"]) is int and type(metrics["best_monitor_value"]) is float
    # holdout: the locations and rows training validated on
    spec = outputs_spec(tmp_path, val_rows=np.array([3, 0, 4]), selection="holdout")
    metrics = outputs.run_metrics(spec, best_and_state(), TEST_PRED, probs, data)
    assert metrics == {**expected_metrics("holdout"), "validation_locations": ["locA", "locB"], "n_validation": 3}


def test_write_outputs_evaluates_the_kept_epoch_and_writes_the_run(tmp_path):
    # The "model" is a table of logits by row (an Embedding): rows 0-8 the test set, 9-13 the training set, so
    # the outputs show which weights were evaluated. The kept epoch's table predicts TEST_PRED; the model's
    # current one (a later epoch) predicts class 3 everywhere.
    kept = np.zeros((14, 4), np.float32)
    kept[:9] = logits_for(TEST_PRED)
    kept[9:, 1] = 5.0
    model = torch.nn.Embedding(14, 4)
    model.weight.data[:] = torch.tensor([[0.0, 0.0, 0.0, 9.0]])
    state = best_and_state({"weight": torch.from_numpy(kept)})
    calls = []

    class TableRunner:
        def infer(self, features, rows, batch_size):
            calls.append((features[0].item(), rows, batch_size))
            ids = features.long()
            with torch.no_grad():
                return model(ids).numpy(), torch.stack([features, features * 10], 1).float().numpy()

    state.model = model
    spec = outputs_spec(tmp_path)
    x_test, x_train = torch.arange(0, 9, dtype=torch.float16), torch.arange(9, 14, dtype=torch.float16)
    data = SimpleNamespace(x_test=x_test, x_train=x_train, test_labels=TEST_LABELS, test_devices=TEST_DEVICES)
    metrics = outputs.write_outputs(spec, state, TableRunner(), data)  # makes the run folder and its parents
    out = tmp_path / "runs" / "ref_abc" / "run"
    assert calls == [(0.0, None, 7), (9.0, None, 7)]  # the whole test set and the whole training set
    assert metrics == expected_metrics()  # from the kept epoch's logits: TEST_PRED, probabilities 0.9
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (out / "history.csv").read_text() == (
        "epoch,train_loss,lr,val_acc_a,val_acc_b,val_acc_c,val_avg_bc,val_overall\n"
        "1,1.75,1.0,0.25,0.5,0.75,0.625,0.5\n"
        "2,1.5,0.5,0.5,0.5,0.75,0.625,0.5\n"
        "3,1.25,0.3333333333333333,0.75,0.5,0.75,0.625,0.5\n")
    assert (out / "epoch_seconds.csv").read_text() == "epoch,seconds\n1,3.5\n2,4.5\n3,5.5\n"

    saved = torch.load(out / "model.pt", weights_only=False)
    assert set(saved) == {"state_dict", "meta"} and torch.equal(saved["state_dict"]["weight"], torch.from_numpy(kept))
    assert saved["meta"] == {"model_cfg": {"channels": [2]}, "n_classes": 4, "temperature": 2.0, "loss": "focal",
                             "seed": 1, "best_epoch": 2, "selection": "test", "monitor": "avg_bc",
                             "scenes": ["s0", "s1", "s2", "s3"]}

    with np.load(out / "embeddings.npz") as emb:
        assert sorted(emb.files) == sorted(["train_embeddings", "train_labels", "train_devices", "test_embeddings",
                                            "test_labels", "test_devices"])
        assert emb["train_embeddings"].dtype == emb["test_embeddings"].dtype == np.float32
        assert emb["train_embeddings"].tolist() == [[i, 10 * i] for i in range(9, 14)]
        assert emb["test_embeddings"].tolist() == [[i, 10 * i] for i in range(9)]
        assert emb["train_labels"].tolist() == [3, 2, 1, 0, 1] and emb["test_labels"].tolist() == TEST_LABELS.tolist()
        assert emb["train_devices"].tolist() == list("abcab") and emb["train_devices"].dtype.kind == "U"
        assert emb["test_devices"].tolist() == list("aabbcccaa") and emb["test_devices"].dtype.kind == "U"
    with np.load(out / "predictions.npz") as pred:
        assert sorted(pred.files) == ["devices", "filenames", "labels", "logits", "probs"]
        assert pred["filenames"].tolist() == [f"audio/t{i}.wav" for i in range(9)]
        assert pred["labels"].tolist() == TEST_LABELS.tolist() and pred["devices"].tolist() == list("aabbcccaa")
        assert pred["logits"].dtype == pred["probs"].dtype == np.float32
        assert np.array_equal(pred["logits"], kept[:9])
        expected_probs = np.full((9, 4), 1 / 30)
        expected_probs[np.arange(9), TEST_PRED] = 0.9
        assert np.allclose(pred["probs"], expected_probs, atol=1e-6)  # softmax(z / T), T = 2
    names = sorted(["metrics.json", "history.csv", "epoch_seconds.csv", "model.pt", "embeddings.npz", "predictions.npz"])
    assert sorted(p.name for p in out.iterdir()) == names
    # written again into the existing folder (a rerun): the same bytes
    before = {name: (out / name).read_bytes() for name in names}
    assert outputs.write_outputs(spec, state, TableRunner(), data) == metrics
    assert {name: (out / name).read_bytes() for name in names} == before
