"""TAU Urban Acoustic Scenes 2019 Mobile (DCASE2019 Task 1B) layout: the scene and device names (the one
place they are defined), file-name parsing, validated loading, and reading the prepared manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

SCENES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
DEVICES: tuple[str, ...] = ("a", "b", "c")

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
FOLD_COLUMNS = ("filename", "scene_label")
TEST_COLUMNS = ("filename",)
MANIFEST_COLUMNS = (
    "filename",
    "scene_label",
    "label",
    "device",
    "city",
    "location",
    "segment",
    "identifier",
    "group",
    "split",
    "source_label",
)
SPLITS = ("train", "evaluate")


class DatasetError(ValueError):
    """A problem with the dataset on disk; the message names the file and row."""


def parse_filename(filename: str) -> dict:
    """Split ``audio/<scene>-<city>-<location>-<segment>-<device>.wav`` into its fields.

    Scene names contain underscores but never '-', so a plain split on '-' is unambiguous.
    """
    stem = Path(str(filename)).name
    if not stem.endswith(".wav"):
        raise DatasetError(f"{filename}: expected a .wav file name")
    parts = stem[: -len(".wav")].split("-")
    if len(parts) != 5 or any(p == "" for p in parts):
        raise DatasetError(
            f"{filename}: file name must look like <scene>-<city>-<location>-<segment>-<device>.wav"
        )
    scene, city, location, segment, device = parts
    return {
        "scene_label": scene,
        "city": city,
        "location": location,
        "segment": segment,
        "device": device,
        "identifier": f"{city}-{location}",
        "group": f"{scene}-{city}-{location}-{segment}",
    }


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a tab-separated TAU table as strings and check its header."""
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for malformed text
        raise DatasetError(f"{path}: cannot parse as a tab-separated table ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: header lacks column(s) {missing}; found {list(df.columns)} "
            f"(expected tab-separated {list(columns)})"
        )
    return df


def _check_duplicates(df: pd.DataFrame, path: Path) -> None:
    dup = df["filename"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise DatasetError(f"{path}: row {i + 1}: duplicated file {df['filename'].iloc[i]}")


def load_tau(root: str | os.PathLike, devices: Iterable[str] = DEVICES) -> pd.DataFrame:
    """Read and cross-check meta.csv and the fold1 train/evaluate/test lists.

    Returns one row per meta.csv file with the manifest columns (without raw_md5); files
    listed in no fold get split ``unused``. Any inconsistency raises DatasetError naming the
    file and the 1-based data row.
    """
    root = Path(root)
    devices = tuple(devices)
    if not root.is_dir():
        raise DatasetError(f"data root does not exist: {root}")
    meta_path = root / "meta.csv"
    meta = _read_table(meta_path, META_COLUMNS)
    _check_duplicates(meta, meta_path)

    rows = []
    for i, rec in enumerate(meta.itertuples(index=False), start=1):
        where = f"{meta_path}: row {i} ({rec.filename})"
        try:
            fields = parse_filename(rec.filename)
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if fields["device"] not in devices:
            raise DatasetError(
                f"{where}: unknown device letter {fields['device']!r}; allowed: {', '.join(devices)}"
            )
        if rec.scene_label not in SCENES:
            raise DatasetError(f"{where}: unknown scene label {rec.scene_label!r}; allowed: {', '.join(SCENES)}")
        if fields["scene_label"] != rec.scene_label:
            raise DatasetError(
                f"{where}: scene label {rec.scene_label!r} disagrees with the file name's scene "
                f"{fields['scene_label']!r}"
            )
        if str(rec.source_label) != fields["device"]:
            raise DatasetError(
                f"{where}: source_label {rec.source_label!r} disagrees with the file name's device {fields['device']!r}"
            )
        if rec.identifier != fields["identifier"]:
            raise DatasetError(
                f"{where}: identifier {rec.identifier!r} disagrees with the file name ({fields['identifier']!r})"
            )
        if not (root / rec.filename).is_file():
            raise DatasetError(f"{where}: audio file does not exist: {root / rec.filename}")
        rows.append(
            {
                "filename": rec.filename,
                "scene_label": rec.scene_label,
                "label": SCENES.index(rec.scene_label),
                "device": fields["device"],
                "city": fields["city"],
                "location": fields["location"],
                "segment": fields["segment"],
                "identifier": fields["identifier"],
                "group": fields["group"],
                "split": "unused",
                "source_label": rec.source_label,
            }
        )
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    index_of = {f: k for k, f in enumerate(df["filename"])}

    setup = root / "evaluation_setup"
    for split in SPLITS:
        path = setup / f"fold1_{split}.csv"
        fold = _read_table(path, FOLD_COLUMNS)
        _check_duplicates(fold, path)
        for i, rec in enumerate(fold.itertuples(index=False), start=1):
            where = f"{path}: row {i} ({rec.filename})"
            k = index_of.get(rec.filename)
            if k is None:
                raise DatasetError(f"{where}: file is not listed in {meta_path}")
            if rec.scene_label != df.at[k, "scene_label"]:
                raise DatasetError(
                    f"{where}: scene label {rec.scene_label!r} disagrees with meta.csv "
                    f"({df.at[k, 'scene_label']!r})"
                )
            if df.at[k, "split"] != "unused":
                raise DatasetError(f"{where}: file is also listed in fold1_{df.at[k, 'split']}.csv")
            df.at[k, "split"] = split

    test_path = setup / "fold1_test.csv"
    test = _read_table(test_path, TEST_COLUMNS)
    _check_duplicates(test, test_path)
    for i, name in enumerate(test["filename"], start=1):
        if name not in index_of:
            raise DatasetError(f"{test_path}: row {i} ({name}): file is not listed in {meta_path}")
        if df.at[index_of[name], "split"] != "evaluate":  # fold1_test is fold1_evaluate without its labels
            raise DatasetError(f"{test_path}: row {i} ({name}): file is not listed in {setup / 'fold1_evaluate.csv'}")
    df["label"] = df["label"].astype(int)
    return df


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The prepare stage's manifest CSV (location and segment stay strings: '007' is not 7)."""
    return pd.read_csv(path, dtype={"location": str, "segment": str})


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Counts of files per split x device x scene_label (long format, column ``count``)."""
    return (
        df.groupby(["split", "device", "scene_label"], sort=True)
        .size()
        .rename("count")
        .reset_index()
    )


# --------------------------------------------------------------------------- the holdout split
HOLDOUT_SPLIT = "holdout"  # fold1_train rows kept out of every fit when train.selection is holdout


def select_holdout(identifiers: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose recording location is held out for validation (seeded, by location).

    The same mask everywhere: training validates on these rows, and the spectrum correction and the
    standardisation statistics leave them out (`without_holdout`), so nothing is fitted on them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"train.holdout_fraction must be in (0, 1), got {fraction}")
    ids = np.asarray(identifiers, dtype=str)
    unique = np.unique(ids)  # sorted, so the choice depends only on the seed and the set
    if len(unique) < 2:
        raise ValueError("train.holdout_fraction: the training cache has fewer than 2 recording locations")
    n_hold = min(max(1, int(round(fraction * len(unique)))), len(unique) - 1)
    rng = np.random.default_rng([seed, 0x401D])
    held = rng.choice(unique, size=n_hold, replace=False)
    return np.isin(ids, held)


def without_holdout(manifest: pd.DataFrame, holdout: dict | None) -> pd.DataFrame:
    """The manifest with the held-out fold1_train locations moved to split 'holdout' (None: unchanged).

    `holdout` is {"fraction": train.holdout_fraction, "seed": train.holdout_seed}, given only when
    train.selection is holdout.
    """
    if not holdout:
        return manifest
    out = manifest.copy()
    train = out["split"] == "train"
    held = select_holdout(out.loc[train, "identifier"].to_numpy(dtype=str), float(holdout["fraction"]),
                          int(holdout["seed"]))
    out.loc[out.index[train][held], "split"] = HOLDOUT_SPLIT
    return out
