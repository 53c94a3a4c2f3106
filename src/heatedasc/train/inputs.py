"""The feature caches a run reads, checked to be this run's own: the provenance record beside a cache must name
the run's correction, split and holdout, and the holdout split of the training cache (train.selection holdout)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from heatedasc.feature_cache import FeatureCache, load_feature_cache
from heatedasc.tau import DEVICES, select_holdout

RECORD_SUFFIX = ".provenance.json"  # a job's record beside its output: results/features/none/train.provenance.json
UPSTREAM_DEPTH = 4  # records followed up the features' inputs (stats, coefficients -> mean spectra -> prepare)


def run_holdout(cfg: dict) -> dict | None:
    """The holdout a run needs every fit to have left out, as the jobs record it (params `holdout`): None unless
    train.selection is holdout."""
    if cfg["selection"] != "holdout":
        return None
    return {"fraction": float(cfg["holdout_fraction"]), "seed": int(cfg["holdout_seed"])}


def _read_record(path: Path, what: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable provenance record of {what} ({exc})") from exc
    return record if isinstance(record, dict) else {}


def _workflow_dir(record: dict, output: Path) -> Path | None:
    """The directory the record's relative paths start from: where `output`, as the record names it, lies."""
    resolved = output.resolve().as_posix()
    for group in record.get("outputs", {}).values():
        for name in group:
            if not Path(name).is_absolute() and (resolved == name or resolved.endswith("/" + name)):
                return Path(resolved[: len(resolved) - len(name)] or "/")
    return None


def recorded_holdouts(record: dict, output: Path, depth: int = UPSTREAM_DEPTH) -> dict[Path, Any]:
    """{record path: its params `holdout`} of every job upstream of the one that wrote `output` (record `record`)
    that recorded one: the feature statistics and the mean spectra behind the correction. Records that are not
    there (files made outside the workflow) are skipped."""
    base = _workflow_dir(record, output)
    found: dict[Path, Any] = {}
    if base is None or depth == 0:
        return found
    for group in record.get("inputs", {}).values():
        for name in group:
            if name.startswith("{"):  # {data.root}/...: raw data, written by no job
                continue
            upstream = Path(name) if Path(name).is_absolute() else base / name
            record_path = upstream.with_suffix(RECORD_SUFFIX)
            if upstream == output or not record_path.is_file():
                continue
            upstream_record = _read_record(record_path, upstream)
            if "holdout" in upstream_record.get("params", {}):
                found[record_path] = upstream_record["params"]["holdout"]
            found.update(recorded_holdouts(upstream_record, upstream, depth - 1))
    return found


def _holdout_key(holdout) -> tuple | None:
    return None if not holdout else (float(holdout["fraction"]), int(holdout["seed"]))


def _describe_holdout(holdout) -> str:
    if not holdout:
        return "no holdout (every fold1_train location fitted)"
    return f"the holdout train.holdout_fraction {float(holdout['fraction']):g}, train.holdout_seed {int(holdout['seed'])}"


def check_cache_origin(cache: FeatureCache, *, correction: str | None, split: str, holdout: Any = ...) -> None:
    """The features stage's provenance record beside a cache (if any) must name this run's correction and split,
    and the fits behind the cache (feature statistics, and the mean spectra of the correction) must have left
    out exactly the run's held-out locations: `holdout` is run_holdout(...) (None: no holdout; ... = unchecked).

    A cache of another correction, split or holdout has the right shape and passes every other check, so
    without this a run would silently train or test on the wrong features, or validate on locations the
    standardisation or the correction was fitted on.
    """
    record_path = cache.npy_path.with_suffix(RECORD_SUFFIX)
    if not record_path.is_file():
        return  # caches written outside the workflow carry no record
    record = _read_record(record_path, cache.npy_path)
    wildcards = record.get("wildcards", {})
    made_for = wildcards.get("correction")
    if correction and made_for is not None and made_for != correction:
        raise ValueError(
            f"{cache.npy_path} was built for correction '{made_for}' (per {record_path}), "
            f"but this run is for correction '{correction}'"
        )
    if wildcards.get("split") not in (None, split):
        raise ValueError(
            f"{cache.npy_path} holds the '{wildcards['split']}' split (per {record_path}), expected '{split}'"
        )
    if holdout is ...:
        return
    for upstream, recorded in recorded_holdouts(record, cache.npy_path).items():
        if _holdout_key(recorded) != _holdout_key(holdout):
            raise ValueError(
                f"{cache.npy_path} was built with {_describe_holdout(recorded)} (per {upstream}), but this run has "
                f"{_describe_holdout(holdout)}; rebuild the features with this run's train.selection, "
                "train.holdout_fraction and train.holdout_seed"
            )


def load_run_caches(train_npy: str | os.PathLike, train_index: str | os.PathLike, eval_npy: str | os.PathLike,
                    eval_index: str | os.PathLike, *, n_classes: int) -> tuple[FeatureCache, FeatureCache]:
    """The training and evaluation caches, checked to fit each other: the same clip shape, every device in the
    evaluation cache, labels in 0..n_classes-1."""
    train = load_feature_cache(train_npy, train_index)
    test = load_feature_cache(eval_npy, eval_index)
    if train.clip_shape != test.clip_shape:
        raise ValueError(
            f"feature shape mismatch: {train.npy_path} has clips of {train.clip_shape} "
            f"but {test.npy_path} has {test.clip_shape}"
        )
    test_devices = test.index["device"].to_numpy(dtype=str)
    for d in DEVICES:
        if not (test_devices == d).any():
            raise ValueError(f"{test.index_path}: no rows of device '{d}' in the evaluation cache")
    for cache in (train, test):
        labels = cache.index["label"].to_numpy()
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{cache.index_path}: column 'label' must lie in 0..{n_classes - 1}")
    return train, test


def check_run_caches(train: FeatureCache, test: FeatureCache, *, correction: str, cfg: dict) -> None:
    """Both caches were built for this run (check_cache_origin: correction, split, holdout), and the evaluation
    cache holds no training file."""
    holdout = run_holdout(cfg)
    check_cache_origin(train, correction=correction, split="train", holdout=holdout)
    check_cache_origin(test, correction=correction, split="evaluate", holdout=holdout)
    shared = sorted(set(train.index["filename"]) & set(test.index["filename"]))
    if shared:
        raise ValueError(
            f"{train.index_path} and {test.index_path} share {len(shared)} file(s) (first: {shared[0]}); "
            "the evaluation cache must not hold training files"
        )


def split_rows(train: FeatureCache, cfg: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows trained on, rows validated on) of the training cache. train.selection holdout: the held-out
    locations validate, the same ones the correction and the standardisation left out (tau.without_holdout);
    otherwise every row trains and the evaluation cache validates (None)."""
    if cfg["selection"] == "holdout":
        devices = train.index["device"].to_numpy(dtype=str)
        val_mask = select_holdout(train.index["identifier"].to_numpy(dtype=str), float(cfg["holdout_fraction"]),
                                  int(cfg["holdout_seed"]))
        fit_rows = np.flatnonzero(~val_mask)
        val_rows: np.ndarray | None = np.flatnonzero(val_mask)
        if cfg["monitor"] == "avg_bc":
            for d in ("b", "c"):
                if not (devices[val_rows] == d).any():
                    raise ValueError(
                        f"train.holdout_fraction: the held-out locations of {train.index_path} have no rows of "
                        f"device '{d}', so train.monitor 'avg_bc' cannot be computed"
                    )
    else:
        fit_rows = np.arange(len(train.index))
        val_rows = None
    if len(fit_rows) == 0:
        raise ValueError(f"{train.index_path}: no training rows")
    return fit_rows, val_rows
