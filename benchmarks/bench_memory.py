"""Peak memory per data stage at two dataset sizes: memory must not grow with the number of clips.

Stages (each in a fresh subprocess, 2 torch threads, batch 16 as in params.yaml):
  mean_spectra  heatedasc.correction.compute_mean_spectra (all clips are a/b/c triplets)
  feature_stats heatedasc.features.compute_feature_stats
  features      heatedasc.features.build_feature_cache (train split, resumable shards + final memmap)

Reported per stage and size: ``base`` = RSS after imports and set-up (before the stage),
``peak`` = ru_maxrss (everything resident, including file-backed pages of the memmapped cache),
``anon`` = peak anonymous RSS (sampled from /proc/self/status every 5 ms: the process's own
working memory, without page cache of mapped files). Growth per clip = Δanon / Δclips; the last
column extrapolates anon to the real fold1_train (10,265 clips). The cache itself is
10,265 × 256 × 862 × 2 B = 4.5 GB on disk (memmapped, written through the page cache).

    python benchmarks/bench_memory.py                  # 60 and 240 clips of 10 s
    python benchmarks/bench_memory.py --sizes 30 120
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SR = 44100
N_SAMPLES = 10 * SR
REAL_TRAIN_CLIPS = 10_265
PAPER = dict(n_fft=2048, hop_length=512, n_mels=256, f_min=0.0, f_max=22050.0, log_offset=1e-7, remove_dc=True)
STAGES = ("mean_spectra", "feature_stats", "features")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def write_set(folder: Path, n_clips: int) -> None:
    """n_clips prepared clips (10 s mono 44.1 kHz PCM_24) as a/b/c triplets + a manifest CSV."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    audio = folder / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_clips):
        g, d = divmod(i, 3)
        device = "abc"[d]
        group = f"park-lyon-{g}-0"
        name = f"{group}-{device}.wav"
        white = rng.standard_normal(N_SAMPLES)
        x = 0.05 * white + 0.3 * np.cumsum(white) / np.sqrt(N_SAMPLES)
        sf.write(audio / name, (0.9 * x / np.abs(x).max()).astype(np.float32), SR, subtype="PCM_24")
        rows.append(dict(filename=f"audio/{name}", scene_label="park", label=4, device=device, city="lyon",
                         location=str(g), segment="0", identifier=f"lyon-{g}", group=group, split="train",
                         source_label=device, raw_md5="0" * 32))
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


def run_stage(stage: str, folder: Path, threads: int, batch_size: int) -> dict:
    """Child process: set up, then run one stage while a thread samples anonymous RSS."""
    import numpy as np
    import torch

    from heatedasc.correction import compute_mean_spectra
    from heatedasc.feature_stats import compute_feature_stats
    from heatedasc.features import LogMelExtractor, build_feature_cache
    from heatedasc.tau import DEVICES, read_manifest

    torch.set_num_threads(threads)
    manifest = read_manifest(folder / "manifest.csv")
    audio = folder / "audio"
    rng = np.random.default_rng(1)
    extractor = LogMelExtractor(sample_rate=SR, coefficients={d: rng.uniform(0.5, 2, 1025) for d in DEVICES}, **PAPER)
    stats = {"mean": np.zeros(256), "std": np.ones(256), "n_frames": 1, "n_files": 1}
    base_anon, base_rss = _status_kb("RssAnon"), _status_kb("VmRSS")
    peak = {"anon": base_anon}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _status_kb("RssAnon"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if stage == "mean_spectra":
        compute_mean_spectra(manifest, audio, n_fft=2048, hop_length=512, remove_dc=True, devices=DEVICES,
                             batch_size=batch_size, progress=False)
    elif stage == "feature_stats":
        compute_feature_stats(manifest, audio, extractor, batch_size=batch_size, progress=False)
    else:
        out = folder / "cache"
        build_feature_cache(manifest, "train", audio, extractor, stats, out / "train.npy", out / "train.csv",
                            batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak["anon"] = max(peak["anon"], _status_kb("RssAnon"))
    return {"base_mb": base_rss / 1024, "base_anon_mb": base_anon / 1024,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_mb": peak["anon"] / 1024, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=(60, 240))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_stage(args.child[0], Path(args.child[1]), args.threads, args.batch_size)))
        return

    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            write_set(folder, n)
            print(f"wrote {n} clips in {time.perf_counter() - t0:.0f} s", flush=True)
            for stage in STAGES:
                cmd = [sys.executable, __file__, "--child", stage, str(folder), "--threads", str(args.threads),
                       "--batch-size", str(args.batch_size)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if proc.returncode:
                    sys.exit(f"{stage} with {n} clips failed:\n{proc.stderr}")
                results[stage, n] = json.loads(proc.stdout.strip().splitlines()[-1])
                r = results[stage, n]
                print(f"  {stage:<13} n={n:<4} peak {r['peak_mb']:.0f} MB, anon {r['anon_mb']:.0f} MB, "
                      f"{n / r['seconds']:.1f} clips/s", flush=True)

    small, large = args.sizes
    print()
    print(f"threads={args.threads} batch={args.batch_size}; MB = MiB; anon = anonymous RSS (no mapped-file pages)")
    print(f"{'stage':<14} {'base':>6} {'peak@' + str(small):>10} {'peak@' + str(large):>10} "
          f"{'anon@' + str(small):>10} {'anon@' + str(large):>10} {'anon/clip':>10} "
          f"{'anon@' + str(REAL_TRAIN_CLIPS):>11}")
    for stage in STAGES:
        a, b = results[stage, small], results[stage, large]
        per_clip = (b["anon_mb"] - a["anon_mb"]) / (large - small)
        extrapolated = b["anon_mb"] + per_clip * (REAL_TRAIN_CLIPS - large)
        print(f"{stage:<14} {a['base_mb']:>6.0f} {a['peak_mb']:>10.0f} {b['peak_mb']:>10.0f} {a['anon_mb']:>10.0f} "
              f"{b['anon_mb']:>10.0f} {per_clip * 1024:>8.1f}kB {extrapolated:>11.0f}")
    cache_mb = 256 * 862 * 2 / 2**20
    print(f"features: the memmapped output adds {cache_mb:.2f} MB per clip of file-backed pages to 'peak' "
          f"({cache_mb * (large - small):.0f} MB between the two sizes); it is page cache, not process memory.")


if __name__ == "__main__":
    main()
