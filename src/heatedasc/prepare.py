"""Prepare stage: validate a TAU-layout folder, convert train/evaluate audio to fixed-length mono.

Outputs (all or nothing): a folder of 44.1 kHz mono wavs, a manifest CSV, a summary CSV and a
report JSON. Audio is converted into a staging folder beside the target and moved at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from heatedasc.audio import read_audio, to_mono_fixed, wav_data_extent, write_wav
from heatedasc.fileio import atomic_path, replace_dir, staging_dir, write_json
from heatedasc.hashing import file_digest
from heatedasc.tau import DEVICES, MANIFEST_COLUMNS, SPLITS, DatasetError, load_tau, summarize

MANIFEST_OUTPUT_COLUMNS = MANIFEST_COLUMNS + ("raw_md5",)  # the manifest is the TAU table + raw hashes
PCM24_MAX = 1.0 - 2.0 ** -23  # the largest sample a 24-bit wav holds; anything beyond is clipped on writing

log = logging.getLogger(__name__)


TRUNCATION_POLICIES = ("error", "warn")


def _check_files(
    root: Path, filenames: Iterable[str], *, duration_s: float, on_truncated: str, progress: bool
) -> dict[str, dict]:
    """Open every file's header before anything is written, so a bad file fails fast.

    A file cut short (its data ends before its header says, or it holds under half of ``duration_s``)
    is an error, or with ``on_truncated='warn'`` a logged, reported file that gets zero-padded.
    Returns {filename: details} of the cut-short files that were let through.
    """
    if on_truncated not in TRUNCATION_POLICIES:
        raise ValueError(f"data.on_truncated must be one of {TRUNCATION_POLICIES}, got {on_truncated!r}")
    truncated: dict[str, dict] = {}
    for name in tqdm(list(filenames), desc="check audio headers", disable=not progress):
        path = root / name
        try:
            info = sf.info(str(path))
            extent = wav_data_extent(path)
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable audio file ({exc})") from exc
        if info.frames <= 0 or info.channels <= 0:
            raise DatasetError(f"{path}: audio file holds no samples")
        seconds = info.frames / info.samplerate
        problem = None
        if extent is not None and extent[1] < extent[0]:
            declared = extent[0] // extent[2]
            problem = (f"truncated: its header declares {declared} frames ({declared / info.samplerate:.3f} s) "
                       f"but the file holds {info.frames} ({seconds:.3f} s)")
        elif seconds < 0.5 * duration_s:
            problem = f"holds only {seconds:.3f} s of audio, less than half of data.duration_s ({duration_s:g} s)"
        if problem is None:
            continue
        if on_truncated == "error":
            raise DatasetError(f"{path}: {problem} (set data.on_truncated: warn to zero-pad such files instead)")
        truncated[name] = {"problem": problem, "frames": int(info.frames), "seconds": seconds}
    return truncated


def prepare_dataset(
    root: str | os.PathLike,
    audio_out_dir: str | os.PathLike,
    manifest_out: str | os.PathLike,
    summary_out: str | os.PathLike,
    report_out: str | os.PathLike,
    *,
    sample_rate: int,
    duration_s: float,
    length_tolerance: int,
    devices: Iterable[str] = DEVICES,
    on_truncated: str = "error",
    progress: bool = True,
) -> pd.DataFrame:
    """Validate ``root`` and write fixed-length mono audio + manifest/summary/report.

    Only fold1 train/evaluate files are converted and listed. On any error no output remains. A file cut
    short stops the stage (``on_truncated='error'``) or is zero-padded and listed (``'warn'``).
    """
    root = Path(root)
    audio_out_dir = Path(audio_out_dir)
    devices = tuple(devices)
    n_samples = int(round(float(duration_s) * int(sample_rate)))

    table = load_tau(root, devices=devices)
    unused = table.loc[table["split"] == "unused", "filename"].astype(str).tolist()
    n_unused = len(unused)
    if unused:
        log.warning("%d file(s) of meta.csv are in no fold1 train/evaluate list and are not used (e.g. %s)",
                    n_unused, ", ".join(unused[:3]))
    df = table[table["split"].isin(SPLITS)].reset_index(drop=True).copy()
    if df.empty:
        raise DatasetError(f"{root}: fold1_train.csv and fold1_evaluate.csv list no files")
    truncated = _check_files(root, df["filename"], duration_s=float(duration_s), on_truncated=on_truncated,
                             progress=progress)
    for name, details in truncated.items():
        log.warning("%s: %s; zero-padded (data.on_truncated: warn)", root / name, details["problem"])

    changed: dict[str, list[str]] = {
        k: [] for k in ("resampled", "downmixed", "padded", "trimmed", "off_length", "clipped")
    }
    changed["truncated"] = sorted(truncated)
    raw_lengths: dict[str, dict] = {}
    clipped_samples: dict[str, int] = {}
    hashes: list[str] = []

    staging = staging_dir(audio_out_dir)
    try:
        with contextlib.ExitStack() as outputs:
            for name in tqdm(df["filename"], desc="prepare audio", disable=not progress):
                path = root / name
                try:
                    wave, sr = read_audio(path)
                except ValueError as exc:
                    raise DatasetError(str(exc)) from exc
                if not np.all(np.isfinite(wave)):
                    raise DatasetError(f"{path}: audio contains NaN or infinite samples")
                if not np.any(wave):
                    # log of zero energy would break the correction coefficients and features
                    raise DatasetError(f"{path}: audio is silent (all samples are zero)")
                mono, changes = to_mono_fixed(wave, sr, target_sr=sample_rate, n_samples=n_samples)
                if not np.any(mono):
                    raise DatasetError(f"{path}: audio is silent after conversion")
                if mono.max() == mono.min():
                    # a constant (DC-only) clip is silent once its mean is removed before the STFT
                    raise DatasetError(f"{path}: audio is constant ({mono[0]:g} in every sample): silent after DC removal")
                n_clipped = int(np.count_nonzero(np.abs(mono) > PCM24_MAX))
                if n_clipped:  # 24-bit output cannot hold |x| > 1 (e.g. resampling overshoot): counted, reported
                    changed["clipped"].append(name)
                    clipped_samples[name] = n_clipped
                for change in changes:
                    kind = change.split()[0]
                    key = {"resample": "resampled", "downmix": "downmixed", "pad": "padded", "trim": "trimmed"}[kind]
                    changed[key].append(name)
                raw_len = wave.shape[1]
                # compare at the target rate so the tolerance means the same at every input rate
                raw_len_target = raw_len * int(sample_rate) / sr
                if abs(raw_len_target - n_samples) > length_tolerance:
                    changed["off_length"].append(name)
                    raw_lengths[name] = {"samples": int(raw_len), "sample_rate": int(sr),
                                         "seconds": raw_len / sr}
                write_wav(staging / Path(name).name, mono, sample_rate, subtype="PCM_24")
                hashes.append(file_digest(path))
            df["raw_md5"] = hashes
            df = df[list(MANIFEST_OUTPUT_COLUMNS)]

            per_split_device = {
                split: {dev: int(((df["split"] == split) & (df["device"] == dev)).sum()) for dev in devices}
                for split in SPLITS
            }
            report = {
                "root": str(root),
                "sample_rate": int(sample_rate),
                "duration_s": float(duration_s),
                "n_samples": n_samples,
                "length_tolerance": int(length_tolerance),
                "n_files": int(len(df)),
                "n_unused": n_unused,
                "counts": per_split_device,
                **{f"n_{k}": len(v) for k, v in changed.items()},
                "files": changed,
                "off_length_raw": raw_lengths,
                "clipped_samples": clipped_samples,
                "truncated_details": truncated,
                "unused": unused,
            }
            manifest_tmp = outputs.enter_context(atomic_path(manifest_out))
            df.to_csv(manifest_tmp, index=False)
            summary_tmp = outputs.enter_context(atomic_path(summary_out))
            summarize(table).to_csv(summary_tmp, index=False)
            report_tmp = outputs.enter_context(atomic_path(report_out))
            write_json(report_tmp, report)
            replace_dir(staging, audio_out_dir)
        log.info("prepared %d files (%s)", len(df), "; ".join(
            f"{split}: " + ", ".join(f"{d} {n}" for d, n in counts.items()) for split, counts in per_split_device.items()))
        for key, names in changed.items():
            if names:
                log.warning("%s: %d file(s) (e.g. %s)", key.replace("_", "-"), len(names), ", ".join(names[:3]))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return df
