"""Spectrum correction (docs/reproduction.md §2): per-device coefficients c_d(f) = R(f) / S_d(f) from parallel recordings."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from heatedasc.audio import audio_path, read_batch
from heatedasc.fileio import atomic_path
from heatedasc.tau import DatasetError

ESTIMATORS = ("ratio_of_means", "mean_of_ratios")
PARALLEL_SPLIT = "train"  # coefficients are estimated from fold1_train only
CPU_CHUNK_CLIPS = 2  # clips per STFT call: a performance knob only, results do not depend on it

log = logging.getLogger(__name__)


def parallel_training_groups(manifest: pd.DataFrame, devices: Sequence[str]) -> pd.DataFrame:
    """Training rows whose group (the same moment) was recorded by every device in ``devices``.

    Sorted by group, then by the order of ``devices``. DatasetError naming the device and the split
    if a device ends up with no parallel files, or if a group holds one device twice.
    """
    devices = list(devices)
    if not devices:
        raise ValueError("parallel_training_groups needs at least one device")
    train = manifest[manifest["split"] == PARALLEL_SPLIT]
    train = train[train["device"].astype(str).isin(devices)]
    duplicated = train[train.duplicated(["group", "device"], keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise DatasetError(
            f"group '{first['group']}' has more than one device-'{first['device']}' file in split "
            f"'{PARALLEL_SPLIT}' ({', '.join(duplicated['filename'].astype(str).head(4))})"
        )
    per_group = train.groupby("group")["device"].nunique()
    complete = set(per_group.index[per_group == len(devices)])
    parallel = train[train["group"].isin(complete)].copy()
    lacking = [d for d in devices if not (parallel["device"] == d).any()]
    if lacking:
        # If no group is complete every device lacks twins; blame the ones with no training files at all.
        absent = [d for d in lacking if not (train["device"] == d).any()]
        d = (absent or lacking)[0]
        n_any = int((train["device"] == d).sum())
        raise DatasetError(
            f"device '{d}' has no parallel recordings (groups recorded by all of {devices}) in split "
            f"'{PARALLEL_SPLIT}' ({n_any} device-'{d}' files in that split)"
        )
    for d in devices:
        dropped = train[(train["device"] == d) & ~train["group"].isin(complete)]
        if len(dropped):
            log.warning("%d device-'%s' files in split '%s' lack a twin of every device in %s and are left out "
                        "of the spectrum correction (e.g. %s)", len(dropped), d, PARALLEL_SPLIT, devices,
                        ", ".join(dropped["filename"].astype(str).head(3)))
    order = {d: i for i, d in enumerate(devices)}
    parallel["_order"] = parallel["device"].map(order)
    return parallel.sort_values(["group", "_order"]).drop(columns="_order").reset_index(drop=True)


def compute_mean_spectra(
    manifest: pd.DataFrame,
    audio_dir: str | os.PathLike,
    *,
    n_fft: int,
    hop_length: int,
    remove_dc: bool,
    devices: Sequence[str],
    batch_size: int,
    progress: bool = True,  # pragma: no mutate  (progress-bar display)
) -> dict:
    """m_i(f) = mean over frames of |X_i(f, t)| for every file of the training triplets (float64)."""
    # torch and the STFT are imported here, not at the top: the coefficient and plot jobs import this module for
    # numpy work only, and loading torch would cost each of them more than the work itself (about 2 s of CPU).
    import torch

    from heatedasc.dsp import stft_magnitude

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = parallel_training_groups(manifest, devices)
    filenames = rows["filename"].astype(str).tolist()
    spectra = np.empty((len(rows), n_fft // 2 + 1), dtype=np.float64)
    length = None
    # pragma: no mutate start  (the progress bar: display only)
    bar = tqdm(total=len(rows), desc="mean spectra", unit="clip", disable=not progress)
    # pragma: no mutate end
    with torch.inference_mode(), bar:
        for start in range(0, len(rows), batch_size):
            stop = min(start + batch_size, len(rows))
            batch, length = read_batch([audio_path(audio_dir, f) for f in filenames[start:stop]], length)
            waves = torch.from_numpy(batch)
            for i in range(0, len(waves), CPU_CHUNK_CLIPS):  # small chunks stay in cache
                magnitude = stft_magnitude(
                    waves[i : i + CPU_CHUNK_CLIPS], n_fft=n_fft, hop_length=hop_length, remove_dc=remove_dc
                )  # [b, F, T]
                spectra[start + i : start + i + len(magnitude)] = magnitude.mean(dim=2, dtype=torch.float64).numpy()
            bar.update(stop - start)  # pragma: no mutate
    bad = ~(np.isfinite(spectra) & (spectra > 0))
    if bad.any():
        i, f = np.argwhere(bad)[0]
        raise ValueError(
            f"{audio_path(audio_dir, filenames[i])}: mean magnitude spectrum is {spectra[i, f]} at bin {f} "
            f"({int(bad[i].sum())} of {spectra.shape[1]} bins not > 0): a silent or constant clip cannot take part "
            f"in the spectrum correction ({int(bad.any(axis=1).sum())} such file(s) among the training triplets)"
        )
    # pragma: no mutate start  (an informational log line)
    log.info("mean spectra of %d training-triplet files (%s)", len(rows),
             ", ".join(f"{d}: {int((rows['device'] == d).sum())}" for d in devices))
    # pragma: no mutate end
    return {
        "filenames": np.asarray(filenames, dtype=str),
        "devices": np.asarray(rows["device"].astype(str).tolist(), dtype=str),
        "groups": np.asarray(rows["group"].astype(str).tolist(), dtype=str),
        "spectra": spectra,
    }


def save_mean_spectra(path: str | os.PathLike, spectra: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            filenames=np.asarray(spectra["filenames"], dtype=str),
            devices=np.asarray(spectra["devices"], dtype=str),
            groups=np.asarray(spectra["groups"], dtype=str),
            spectra=np.asarray(spectra["spectra"], dtype=np.float64),
        )


def load_mean_spectra(path: str | os.PathLike) -> dict:
    with np.load(path, allow_pickle=False) as z:
        missing = {"filenames", "devices", "groups", "spectra"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        return {k: z[k] for k in ("filenames", "devices", "groups", "spectra")}


def estimate_coefficients(
    mean_spectra: dict, *, reference_devices: Sequence[str], estimator: str, devices: Sequence[str]
) -> dict[str, np.ndarray]:
    """c_d(f) for every device in ``devices``; an empty reference set means no correction (ones).

    ``ratio_of_means`` (paper): c_d = mean_{d' in ref} S_{d'} / S_d with S_d the mean of m_i over d's files.
    ``mean_of_ratios`` (Kosmider's code): c_d = mean over triplets of R_i / m_i(d), R_i = mean over ref of m_i.
    """
    devices = list(devices)
    reference_devices = list(reference_devices)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}' (choose from {list(ESTIMATORS)})")
    for d in reference_devices:
        if d not in devices:
            raise ValueError(f"reference device '{d}' is not one of the devices {devices}")
    spectra = np.asarray(mean_spectra["spectra"], dtype=np.float64)
    file_devices = np.asarray(mean_spectra["devices"]).astype(str)
    groups = np.asarray(mean_spectra["groups"]).astype(str)
    n_freqs = spectra.shape[1]
    if not reference_devices:
        return {d: np.ones(n_freqs, dtype=np.float64) for d in devices}
    for d in devices:
        if not np.any(file_devices == d):
            raise DatasetError(f"device '{d}' has no parallel files in split '{PARALLEL_SPLIT}' (mean spectra)")

    if estimator == "ratio_of_means":
        device_spectrum = {d: spectra[file_devices == d].mean(axis=0) for d in devices}
        reference = np.mean([device_spectrum[d] for d in reference_devices], axis=0)
        coefficients = {d: reference / device_spectrum[d] for d in devices}
    else:
        # Triplet table [G, D, F]: only groups that hold every device take part.
        table: dict[str, dict[str, int]] = {}
        for i, (g, d) in enumerate(zip(groups, file_devices)):
            table.setdefault(g, {})[d] = i
        complete = [g for g in sorted(table) if all(d in table[g] for d in devices)]
        if not complete:
            raise DatasetError(f"no group holds all devices {devices} in split '{PARALLEL_SPLIT}' (mean spectra)")
        stacked = np.stack([[spectra[table[g][d]] for d in devices] for g in complete])  # [G, D, F]
        ref_idx = [devices.index(d) for d in reference_devices]
        reference = stacked[:, ref_idx].mean(axis=1)  # [G, F]
        coefficients = {d: (reference / stacked[:, j]).mean(axis=0) for j, d in enumerate(devices)}
    for d, c in coefficients.items():
        if not np.all(np.isfinite(c)):
            raise ValueError(f"coefficients for device '{d}' are not finite (a silent file or frequency bin?)")
    return coefficients


def save_coefficients(
    path: str | os.PathLike,
    coefficients: dict[str, np.ndarray],
    *,
    correction: str,
    reference_devices: Sequence[str],
    estimator: str,
    files: Sequence[str],
    sample_rate: int,
    n_fft: int,
) -> None:
    """npz (no pickle): devices, coefficients [D, F], and the meta that produced them (sample_rate and n_fft
    label the frequency axis: bin k is k·sample_rate/n_fft Hz)."""
    devices = list(coefficients)
    matrix = np.stack([np.asarray(coefficients[d], dtype=np.float64) for d in devices])
    if matrix.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"{path}: {matrix.shape[1]} coefficients per device do not fit n_fft {n_fft} "
                         f"({n_fft // 2 + 1} bins)")
    arrays = {
        "devices": np.asarray(devices, dtype=str),
        "coefficients": matrix,
        "correction": np.asarray(str(correction)),
        "reference_devices": np.asarray(list(reference_devices), dtype=str).reshape(-1),
        "estimator": np.asarray(str(estimator)),
        "files": np.asarray(list(files), dtype=str).reshape(-1),
        "sample_rate": np.int64(sample_rate),
        "n_fft": np.int64(n_fft),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub takes `allow_pickle` for a keyword


COEFFICIENT_KEYS = ("devices", "coefficients", "correction", "reference_devices", "estimator", "files",
                    "sample_rate", "n_fft")


def load_coefficients(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(coefficients by device, meta) from an npz written by ``save_coefficients``."""
    with np.load(path, allow_pickle=False) as z:
        missing = set(COEFFICIENT_KEYS) - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        devices = [str(d) for d in z["devices"]]
        matrix = z["coefficients"].astype(np.float64)
        coefficients = {d: matrix[i].copy() for i, d in enumerate(devices)}
        meta = {
            "correction": str(z["correction"]),
            "reference_devices": [str(d) for d in z["reference_devices"]],
            "estimator": str(z["estimator"]),
            "files": [str(f) for f in z["files"]],
            "sample_rate": int(z["sample_rate"]),
            "n_fft": int(z["n_fft"]),
        }
    return coefficients, meta


def coefficient_curves(path: str | os.PathLike) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(panel title, {device: (frequency in Hz, 20·log10 c_d in dB)}) of one coefficient file: what the
    coefficient figure draws."""
    coefficients, meta = load_coefficients(path)
    refs = ",".join(meta["reference_devices"]) or "-"
    title = f"{meta['correction']} (ref {refs}, {meta['estimator']})"
    curves = {d: (np.arange(len(c)) * meta["sample_rate"] / meta["n_fft"], 20 * np.log10(c))
              for d, c in coefficients.items()}
    return title, curves


def plot_coefficients(paths: Sequence[str | os.PathLike], out_png: str | os.PathLike) -> None:
    """20·log10 c_d(f) per device against frequency, one panel per correction file (coefficient_curves)."""
    from heatedasc.plotting import pyplot, save_figure

    paths = list(paths)
    if not paths:
        raise ValueError("plot_coefficients needs at least one coefficient file")
    plt = pyplot()
    # Figure layout and styling only below: what is drawn is coefficient_curves' (tested).
    # pragma: no mutate start
    fig, axes = plt.subplots(1, len(paths), figsize=(4.5 * len(paths), 3.5), sharey=True, squeeze=False)
    for ax, path in zip(axes[0], paths):
        title, curves = coefficient_curves(path)
        for d, (freqs, db) in curves.items():
            ax.plot(freqs, db, label=f"device {d}", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("frequency [Hz]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("correction 20·log10 c_d [dB]")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=120)
    plt.close(fig)
    # pragma: no mutate end
