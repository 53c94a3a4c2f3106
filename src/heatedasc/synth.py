"""Deterministic synthetic dataset in the exact TAU Urban Acoustic Scenes 2019 Mobile layout.

Design
------
* Scenes: each of the 10 classes has a fixed template (independent of the seed): a smooth
  spectral envelope on a log-frequency axis (spectral tilt + three Gaussian bumps), an
  amplitude-modulation rate/depth, a rate and decay of transient events, and a few tones.
* Variation: every recording location draws its own envelope jitter (smooth, a few dB), gain,
  AM/event rates and tone detuning; every segment adds a smaller jitter and gain on top, so the
  classes overlap somewhat and a classifier has to generalise across locations.
* Devices: one underlying scene signal per parallel group is "recorded" by a, b and c by
  multiplying the spectrum of the whole clip by the device's fixed frequency response, then
  adding a little independent device noise. a is nearly flat; b and c have smooth deviations of
  ``device_strength_db`` peak to peak, b a low cut and c a high cut.
* Layout: ``audio/<scene>-<city>-<location>-<segment>-<device>.wav`` (24-bit PCM), ``meta.csv``
  and ``evaluation_setup/fold1_{train,evaluate,test}.csv`` with the real headers, tab-separated.
  Train and evaluate use disjoint recording locations. Same seed => byte-identical output.
* Ownership: the generator writes only into a folder that is absent, empty, or that it wrote itself
  (it leaves ``.heatedasc-synthetic.json`` there). A folder holding anything else is a user's data and
  is never replaced: see ``check_synthetic_root``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import lfilter, resample_poly
from tqdm import tqdm

from heatedasc.audio import write_wav
from heatedasc.fileio import replace_dir, staging_dir
from heatedasc.ownership import OWNER_MARKER, check_synthetic_root
from heatedasc.tau import DEVICES, SCENES

# Fixed seeds of the scene templates and device responses (the class/device design, not the data draw).
_TEMPLATE_SEED = 20200504
_DEVICE_SEED = 1905
_LOG_F_REF = math.log2(1000.0)
_LOG_F_MIN = math.log2(30.0)
_A48K_RATE = 48000


@dataclass(frozen=True)
class SceneTemplate:
    tilt_db_per_oct: float
    bump_log2f: tuple[float, ...]
    bump_width_oct: tuple[float, ...]
    bump_db: tuple[float, ...]
    am_rate_hz: float
    am_depth: float
    event_rate_hz: float
    event_decay_s: float
    event_gain: float
    tone_hz: tuple[float, ...]
    tone_level: float


def scene_templates() -> dict[str, SceneTemplate]:
    """The fixed per-scene design (identical for every seed)."""
    rng = np.random.default_rng(_TEMPLATE_SEED)
    templates = {}
    for scene in SCENES:
        n_bumps = 3
        n_tones = int(rng.integers(0, 3))
        templates[scene] = SceneTemplate(
            tilt_db_per_oct=float(rng.uniform(-6.0, -1.0)),
            bump_log2f=tuple(float(x) for x in rng.uniform(math.log2(80), math.log2(12000), n_bumps)),
            bump_width_oct=tuple(float(x) for x in rng.uniform(0.5, 1.4, n_bumps)),
            bump_db=tuple(float(x) for x in rng.uniform(-14.0, 14.0, n_bumps)),
            am_rate_hz=float(rng.uniform(0.5, 8.0)),
            am_depth=float(rng.uniform(0.1, 0.8)),
            event_rate_hz=float(rng.uniform(0.0, 8.0)),
            event_decay_s=float(rng.uniform(0.005, 0.08)),
            event_gain=float(rng.uniform(1.0, 6.0)),
            tone_hz=tuple(float(x) for x in np.exp(rng.uniform(math.log(150), math.log(5000), n_tones))),
            tone_level=float(rng.uniform(0.1, 0.5)),
        )
    return templates


def _log2_freqs(n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, d=1.0 / sr)
    return np.log2(np.maximum(f, 2.0 ** _LOG_F_MIN))


def _smooth_curve(rng: np.random.Generator, log2f: np.ndarray, n_terms: int = 4) -> np.ndarray:
    """Random smooth curve on the log-frequency axis with peak-to-peak 1 over the audible range."""
    x = (log2f - _LOG_F_MIN) / (math.log2(22050.0) - _LOG_F_MIN)
    curve = np.zeros_like(x)
    for k in range(1, n_terms + 1):
        curve += rng.normal() / k * np.cos(math.pi * k * x + rng.uniform(0, 2 * math.pi))
    span = curve.max() - curve.min()
    return (curve - curve.mean()) / (span if span > 0 else 1.0)


def device_responses_db(n: int, sr: int, device_strength_db: float) -> dict[str, np.ndarray]:
    """Fixed device frequency responses in dB on the rfft bins of an n-sample clip."""
    rng = np.random.default_rng(_DEVICE_SEED)
    log2f = _log2_freqs(n, sr)
    f = 2.0 ** log2f
    a = 0.05 * device_strength_db * _smooth_curve(rng, log2f, 3)
    b = device_strength_db * _smooth_curve(rng, log2f, 4) + 10 * np.log10(1.0 / (1.0 + (300.0 / f) ** 4))
    c = device_strength_db * _smooth_curve(rng, log2f, 4) + 10 * np.log10(1.0 / (1.0 + (f / 7000.0) ** 4))
    return {"a": a, "b": b, "c": c}


def _scene_signal(
    rng: np.random.Generator,
    template: SceneTemplate,
    location_state: dict,
    n: int,
    sr: int,
    log2f: np.ndarray,
) -> np.ndarray:
    """One underlying scene recording (before any device), unit-free float64."""
    env_db = template.tilt_db_per_oct * (log2f - _LOG_F_REF)
    for c, w, h in zip(template.bump_log2f, template.bump_width_oct, template.bump_db):
        env_db = env_db + h * np.exp(-0.5 * ((log2f - c) / w) ** 2)
    env_db = env_db + location_state["jitter_db"] + 3.0 * _smooth_curve(rng, log2f, 3)
    spectrum = (rng.standard_normal(log2f.size) + 1j * rng.standard_normal(log2f.size)) * 10.0 ** (env_db / 20)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12

    t = np.arange(n) / sr
    am_rate = template.am_rate_hz * location_state["rate_factor"]
    am = 1.0 + template.am_depth * np.sin(2 * math.pi * am_rate * t + rng.uniform(0, 2 * math.pi))
    n_events = rng.poisson(template.event_rate_hz * location_state["rate_factor"] * n / sr)
    impulses = np.zeros(n)
    impulses[rng.integers(0, n, n_events)] += rng.uniform(0.5, 1.0, n_events)
    decay = math.exp(-1.0 / (template.event_decay_s * sr))
    events = lfilter([1.0], [1.0, -decay], impulses)
    signal = noise * am * (1.0 + template.event_gain * events)
    for hz in template.tone_hz:
        freq = hz * location_state["detune"]
        signal += template.tone_level * math.sqrt(2) * np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    return signal / (np.sqrt(np.mean(signal**2)) + 1e-12)


def _apply_device(
    rng: np.random.Generator, signal: np.ndarray, response_db: np.ndarray, noise_rel: float
) -> np.ndarray:
    recorded = np.fft.irfft(np.fft.rfft(signal) * 10.0 ** (response_db / 20), signal.size)
    rms = np.sqrt(np.mean(recorded**2)) + 1e-12
    return recorded + noise_rel * rms * rng.standard_normal(signal.size)


def _plan(
    rng: np.random.Generator,
    cities: Sequence[str],
    n_parallel: dict[str, int],
    n_a_only: dict[str, int],
    segments_per_location: int,
) -> list[dict]:
    """List of segments (scene, city, location, segment, split, parallel); locations are unique per split."""
    next_location = {city: 0 for city in cities}  # location ids count up per city over both splits
    location_of: dict[tuple, int] = {}
    plan = []
    for split in ("train", "evaluate"):
        for scene in SCENES:
            kinds = np.array([True] * n_parallel[split] + [False] * n_a_only[split])
            kinds = kinds[rng.permutation(kinds.size)]
            for i, parallel in enumerate(kinds):
                chunk, within = divmod(i, segments_per_location * len(cities))
                city = cities[within % len(cities)]
                slot = (split, scene, city, chunk)
                if slot not in location_of:
                    location_of[slot] = next_location[city]
                    next_location[city] += 1
                plan.append(
                    {
                        "split": split,
                        "scene": scene,
                        "city": city,
                        "location": location_of[slot],
                        "parallel": bool(parallel),
                    }
                )
    # segment ids count up within each location (as in the real names)
    seg_counter: dict[tuple, int] = {}
    for item in plan:
        key = (item["city"], item["location"])
        segment = seg_counter.get(key, 0)
        item["segment"] = segment
        seg_counter[key] = segment + 1
    return plan


def _write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def generate_dataset(
    root: str | os.PathLike,
    *,
    seed: int,
    clip_seconds: float,
    sample_rate: int,
    train_parallel_per_scene: int,
    train_a_only_per_scene: int,
    evaluate_parallel_per_scene: int,
    evaluate_a_only_per_scene: int,
    device_a_48k_stereo: bool,
    cities: Sequence[str],
    device_strength_db: float,
    segments_per_location: int = 4,
    device_noise_db: float = -45.0,
    progress: bool = True,
) -> dict:
    """Write a TAU-layout synthetic dataset to ``root`` (atomically) and return a summary dict."""
    root = Path(root)
    check_synthetic_root(root)
    cities = [str(c) for c in cities]
    if not cities or any("-" in c or not c for c in cities):
        raise ValueError(f"cities must be non-empty names without '-': {cities}")
    for key, value in {
        "train_parallel_per_scene": train_parallel_per_scene,
        "train_a_only_per_scene": train_a_only_per_scene,
        "evaluate_parallel_per_scene": evaluate_parallel_per_scene,
        "evaluate_a_only_per_scene": evaluate_a_only_per_scene,
    }.items():
        if int(value) < 0:
            raise ValueError(f"synth.{key} must be >= 0, got {value}")
    if train_parallel_per_scene + train_a_only_per_scene == 0:
        raise ValueError("synth: the train split would be empty")
    n = int(round(clip_seconds * sample_rate))
    if n <= 0:
        raise ValueError(f"synth.clip_seconds * synth.sample_rate must be positive, got {n}")
    n_48k = int(round(clip_seconds * _A48K_RATE))
    g = math.gcd(_A48K_RATE, int(sample_rate))
    up, down = _A48K_RATE // g, int(sample_rate) // g

    rng = np.random.default_rng(seed)
    templates = scene_templates()
    responses = device_responses_db(n, sample_rate, device_strength_db)
    log2f = _log2_freqs(n, sample_rate)
    noise_rel = 10.0 ** (device_noise_db / 20)
    plan = _plan(
        rng,
        cities,
        {"train": train_parallel_per_scene, "evaluate": evaluate_parallel_per_scene},
        {"train": train_a_only_per_scene, "evaluate": evaluate_a_only_per_scene},
        segments_per_location,
    )

    staging = staging_dir(root)
    try:
        (staging / "audio").mkdir()
        (staging / "evaluation_setup").mkdir()
        locations: dict[tuple, dict] = {}
        meta_rows: list[tuple[str, str, str, str]] = []
        folds: dict[str, list[tuple[str, str]]] = {"train": [], "evaluate": []}
        counts = {split: {d: 0 for d in DEVICES} for split in folds}
        for item in tqdm(plan, desc="synth", disable=not progress):
            loc = (item["city"], item["location"])
            if loc not in locations:
                locations[loc] = {
                    "jitter_db": 4.0 * _smooth_curve(rng, log2f, 4),
                    "gain_db": float(rng.uniform(-4.0, 4.0)),
                    "rate_factor": float(rng.uniform(0.8, 1.25)),
                    "detune": float(rng.uniform(0.97, 1.03)),
                }
            state = locations[loc]
            signal = _scene_signal(rng, templates[item["scene"]], state, n, sample_rate, log2f)
            gain = 10.0 ** ((state["gain_db"] + rng.uniform(-2.0, 2.0)) / 20) * 0.05
            signal *= gain
            devices = DEVICES if item["parallel"] else ("a",)
            for device in devices:
                wave = _apply_device(rng, signal, responses[device], noise_rel)
                sr = sample_rate
                if device == "a" and device_a_48k_stereo:
                    wave = resample_poly(wave, up, down)[:n_48k]
                    wave = np.pad(wave, (0, n_48k - wave.size))
                    # two channels with independent small noise, as a stereo recorder would give
                    rms = np.sqrt(np.mean(wave**2)) + 1e-12
                    wave = wave[None, :] + noise_rel * rms * rng.standard_normal((2, wave.size))
                    sr = _A48K_RATE
                peak = np.max(np.abs(wave))
                if peak > 0.95:  # keep 24-bit PCM from clipping
                    wave = wave * (0.95 / peak)
                name = f"{item['scene']}-{item['city']}-{item['location']}-{item['segment']}-{device}.wav"
                write_wav(staging / "audio" / name, wave.astype(np.float64), sr, subtype="PCM_24")
                filename = f"audio/{name}"
                meta_rows.append((filename, item["scene"], f"{item['city']}-{item['location']}", device))
                folds[item["split"]].append((filename, item["scene"]))
                counts[item["split"]][device] += 1

        meta_rows.sort()
        for split in folds:
            folds[split].sort()
        _write_table(staging / "meta.csv", ("filename", "scene_label", "identifier", "source_label"), meta_rows)
        for split, rows in folds.items():
            _write_table(staging / "evaluation_setup" / f"fold1_{split}.csv", ("filename", "scene_label"), rows)
        _write_table(
            staging / "evaluation_setup" / "fold1_test.csv", ("filename",), [(f,) for f, _ in folds["evaluate"]]
        )
        (staging / OWNER_MARKER).write_text(json.dumps({
            "generator": "heatedasc.synth.generate_dataset",
            "note": "written by heatedasc's synthetic generator; this folder may be regenerated or deleted by it",
            "seed": int(seed), "clip_seconds": float(clip_seconds), "sample_rate": int(sample_rate),
        }, indent=2) + "\n")
        check_synthetic_root(root)  # again, right before replacing: the folder may have changed meanwhile
        replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "root": str(root),
        "seed": int(seed),
        "n_files": len(meta_rows),
        "n_locations": len(locations),
        "counts": counts,
        "sample_rate": int(sample_rate),
        "clip_seconds": float(clip_seconds),
        "device_a_48k_stereo": bool(device_a_48k_stereo),
    }

