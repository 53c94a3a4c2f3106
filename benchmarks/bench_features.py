"""Prepare + feature throughput: the project's batched path against a plain librosa reference.

Recipe (docs/reproduction.md §1, §3), the same on both sides: read the wav → mono / resample to 44.1 kHz / fix to
10 s → remove DC → |STFT| (n_fft 2048, hop 512, periodic Hann, centre, reflect pad) → × c_d (per
device) → 256-band Slaney mel → log(mel + 1e-7).

* project   = heatedasc.features.log_mel_files (the loop build_feature_cache runs) with
              heatedasc.audio.read_audio + to_mono_fixed as the loader: batches of ``--batch-size``
              clips, each clip read and turned into features by one of torch.get_num_threads()
              pool threads (LogMelExtractor.clip_log_mel; c_d folded into per-device filterbanks).
* librosa   = librosa.load(sr=44100, mono=True) + librosa.util.fix_length, then librosa.stft,
              np.abs(S) * c_d[:, None], librosa.filters.mel(sr=44100, n_fft=2048, n_mels=256) @ ·,
              np.log(· + 1e-7); one file at a time.

Both run in this process, on the same clips (synthetic 10 s 44.1 kHz 24-bit wavs in a temp dir),
after a warm-up, alternating which goes first; the best of ``--repeats`` is kept. Three rows:
end to end (wav file → log-mel), features only (waveforms already in memory) and I/O only
(read + mono/fixed length, one file at a time on both sides). Parity = max |log-mel difference| over every clip, bin and frame.

    python benchmarks/bench_features.py                       # 48 clips, 2 threads
    python benchmarks/bench_features.py --clips 64 --repeats 3
    python benchmarks/bench_features.py --device cuda --batch-size 64   # batched extraction on a GPU

What pinning costs (heatedasc.pinning): ``--kernels avx2 native`` runs the project's side alone in one fresh
process per setting (the pinned environment must be in place before numpy and torch load), interleaved,
``--repeats`` times each, and prints clips/s and the ratio to the first setting; ``--baseline-src DIR`` adds
another checkout's src/ (e.g. the code before a change) run unpinned.

    python benchmarks/bench_features.py --kernels avx2 native --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _set_threads(n: int) -> None:
    # Before numpy/torch load their BLAS/FFT/OpenMP runtimes, so both sides get the same budget.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


SR = 44100
N_SAMPLES = 10 * SR
PAPER = dict(n_fft=2048, hop_length=512, n_mels=256, f_min=0.0, f_max=22050.0, log_offset=1e-7, remove_dc=True)


def write_clips(folder: Path, n: int, devices: tuple[str, ...], seed: int = 0) -> list[tuple[Path, str]]:
    """n synthetic 10 s mono 44.1 kHz PCM_24 wavs (coloured noise + tone + DC), one device after another."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(N_SAMPLES) / SR
    out = []
    for i in range(n):
        white = rng.standard_normal(N_SAMPLES)
        brown = np.cumsum(white) / np.sqrt(N_SAMPLES)
        x = 0.02 * white + 0.2 * brown + 0.05 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.01
        x = 0.9 * x / np.abs(x).max()
        device = devices[i % len(devices)]
        path = folder / f"clip{i:03d}-{device}.wav"
        sf.write(path, x.astype(np.float32), SR, subtype="PCM_24")
        out.append((path, device))
    return out


def make_coefficients(devices: tuple[str, ...], seed: int = 1) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    f = np.linspace(0, 1, PAPER["n_fft"] // 2 + 1)
    coefs = {}
    for d in devices:
        phase, amp = rng.uniform(0, 6), rng.uniform(0.3, 1.0)
        coefs[d] = np.exp(amp * np.sin(8 * f + phase))  # smooth, ~0.37 .. 2.7
    return coefs


# ------------------------------------------------------------------------------------------ project
class Project:
    def __init__(self, coefficients: dict, batch_size: int, device: str) -> None:
        import torch

        from heatedasc.features import LogMelExtractor
        from heatedasc.runtime import resolve_device

        self.torch = torch
        self.batch_size = batch_size
        extractor = LogMelExtractor(sample_rate=SR, coefficients=coefficients, devices=tuple(coefficients), **PAPER)
        # on CUDA: one batched STFT + mel product per batch on the GPU
        self.extractor = extractor.to(resolve_device(device, "--device"))

    def load(self, path: Path):
        from heatedasc.audio import read_audio, to_mono_fixed

        wave, sr = read_audio(path)
        return to_mono_fixed(wave, sr, target_sr=SR, n_samples=N_SAMPLES)[0]

    def features(self, waves: list, devices: list[str]):
        torch, out = self.torch, []
        with torch.inference_mode():
            for s in range(0, len(waves), self.batch_size):
                batch = torch.from_numpy(__import__("numpy").stack(waves[s : s + self.batch_size]))
                index = self.extractor.device_indices(devices[s : s + self.batch_size])
                out.append(self.extractor(batch, index).cpu().numpy())  # .cpu() also waits for the GPU
        return out

    def end_to_end(self, clips: list[tuple[Path, str]]):
        """heatedasc.features.log_mel_files, the loop build_feature_cache runs (pool threads read + compute)."""
        from heatedasc.features import log_mel_files

        index = self.extractor.device_indices([d for _, d in clips])
        with self.torch.inference_mode():
            return [f for _, f in log_mel_files([p for p, _ in clips], index, self.extractor,
                                                batch_size=self.batch_size, load=self.load, n_samples=N_SAMPLES)]


# ------------------------------------------------------------------------------------------ librosa
class Librosa:
    def __init__(self, coefficients: dict) -> None:
        import librosa

        self.librosa = librosa
        self.coefficients = coefficients
        self.mel = librosa.filters.mel(sr=SR, n_fft=PAPER["n_fft"], n_mels=PAPER["n_mels"],
                                       fmin=PAPER["f_min"], fmax=PAPER["f_max"])  # Slaney scale + norm

    def load(self, path: Path):
        y, _ = self.librosa.load(path, sr=SR, mono=True)
        return self.librosa.util.fix_length(y, size=N_SAMPLES)

    def one(self, y, device: str):
        import numpy as np

        y = y - y.mean()
        S = np.abs(self.librosa.stft(y, n_fft=PAPER["n_fft"], hop_length=PAPER["hop_length"], window="hann",
                                     center=True, pad_mode="reflect"))
        return np.log(self.mel @ (S * self.coefficients[device][:, None]) + PAPER["log_offset"])

    def features(self, waves: list, devices: list[str]):
        return [self.one(y, d) for y, d in zip(waves, devices)]

    def end_to_end(self, clips: list[tuple[Path, str]]):
        return [self.one(self.load(p), d) for p, d in clips]


def _rate(fn, n: int) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return n / (time.perf_counter() - t0), result


def project_only(args) -> None:
    """The project's end-to-end and features-only rates in this process, as one JSON line (--project-only)."""
    import json

    import numpy as np
    import torch

    from heatedasc.tau import DEVICES

    torch.set_num_threads(args.threads)
    coefficients = make_coefficients(DEVICES)
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        clips = write_clips(Path(tmp), args.clips, DEVICES)
        project = Project(coefficients, args.batch_size, args.device)
        project.end_to_end(clips[: min(len(clips), args.batch_size)])  # warm-up
        waves = [project.load(p) for p, _ in clips]
        end, out = _rate(lambda: project.end_to_end(clips), len(clips))
        feat, _ = _rate(lambda: project.features(waves, [d for _, d in clips]), len(clips))
        digest = __import__("hashlib").sha256(np.concatenate([o[None] for o in out]).tobytes()).hexdigest()[:12]
    print(json.dumps({"end": end, "feat": feat, "sha256": digest}))


def compare_kernels(args) -> None:
    """Each cpu.kernels setting (and --baseline-src) in fresh processes, interleaved; best rate of each."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "src"))
    from heatedasc.pinning import environment

    settings = [(k, str(repo / "src"), environment({"kernels": k, "threads": 1})) for k in args.kernels]
    if args.baseline_src:
        settings.append(("baseline", str(Path(args.baseline_src).resolve()), {}))
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    cmd = [sys.executable, __file__, "--project-only", "--clips", str(args.clips), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--device", args.device]
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, src, env in (settings if r % 2 == 0 else settings[::-1]):
            proc = subprocess.run(cmd, env={**base_env, **env, "PYTHONPATH": src}, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name}: {proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            old = best.setdefault(name, res)
            old["end"], old["feat"] = max(old["end"], res["end"]), max(old["feat"], res["feat"])
            print(f"  run {r + 1} {name}: end-to-end {res['end']:.1f}, features {res['feat']:.1f} clips/s", flush=True)
    first = settings[0][0]
    print(f"\nclips={args.clips} x 10 s @ 44.1 kHz, 256 mel  threads={args.threads}  batch={args.batch_size}  "
          f"best of {args.repeats}; ratio = {first} time / setting time")
    print(f"{'setting':<12} {'end to end clips/s':>19} {'ratio':>7} {'features clips/s':>17} {'ratio':>7}  output sha256")
    for name, _, _ in settings:
        b = best[name]
        print(f"{name:<12} {b['end']:>19.1f} {best[first]['end'] / b['end']:>6.2f}x {b['feat']:>17.1f} "
              f"{best[first]['feat'] / b['feat']:>6.2f}x  {b['sha256']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="clips per extractor call (execution.features.batch_size)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best rate of each is kept")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                    help="where the project's extractor runs (execution.features.device); librosa always runs on the CPU")
    ap.add_argument("--kernels", nargs="+", choices=("avx2", "native"),
                    help="what pinning costs: the project's side under each cpu.kernels, in fresh processes")
    ap.add_argument("--baseline-src", help="with --kernels: also run this src/ folder unpinned (e.g. older code)")
    ap.add_argument("--project-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kernels:
        return compare_kernels(args)
    _set_threads(args.threads)
    if args.project_only:
        return project_only(args)
    import numpy as np
    import torch

    from heatedasc.tau import DEVICES

    torch.set_num_threads(args.threads)
    coefficients = make_coefficients(DEVICES)
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        clips = write_clips(Path(tmp), args.clips, DEVICES)
        devices = [d for _, d in clips]
        project, reference = Project(coefficients, args.batch_size, args.device), Librosa(coefficients)
        # Warm-up: first calls of torch / librosa (FFT plans, numba, page cache of the wavs).
        for impl in (project, reference):
            impl.end_to_end(clips[: min(len(clips), args.batch_size)])
        waves = [project.load(p) for p, _ in clips]

        best: dict[tuple[str, str], float] = {}
        outputs: dict[str, list] = {}
        names = ("project", "librosa")
        impls = {"project": project, "librosa": reference}
        for r in range(args.repeats):
            order = names if r % 2 == 0 else names[::-1]  # alternate order: no first-run advantage
            for name in order:
                impl = impls[name]
                rate, out = _rate(lambda: impl.end_to_end(clips), len(clips))
                best[name, "end"] = max(best.get((name, "end"), 0.0), rate)
                outputs[name] = out
                rate, _ = _rate(lambda: impl.features(waves, devices), len(clips))
                best[name, "feat"] = max(best.get((name, "feat"), 0.0), rate)
                rate, _ = _rate(lambda: [impl.load(p) for p, _ in clips], len(clips))
                best[name, "io"] = max(best.get((name, "io"), 0.0), rate)
                print(f"  run {r + 1} {name}: end-to-end {best[name, 'end']:.1f} (best so far) clips/s", flush=True)

        ours = np.concatenate(outputs["project"])
        ref = np.stack(outputs["librosa"])
        assert ours.shape == ref.shape == (len(clips), PAPER["n_mels"], N_SAMPLES // PAPER["hop_length"] + 1)
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        # Where librosa's float32 sits on log(1e-7) the error is pure rounding near the offset; report both.
        print()
        print(f"clips={len(clips)} x 10 s @ 44.1 kHz  threads={args.threads}  batch={args.batch_size}  "
              f"device={project.extractor.filterbanks.device}  "
              f"torch {torch.__version__}  python {sys.version.split()[0]}")
        print(f"{'stage':<30} {'project clips/s':>16} {'librosa clips/s':>16} {'ratio':>7}")
        labels = {"end": "end to end (wav -> log-mel)", "feat": "features only (in memory)",
                  "io": "I/O only (read + mono/fix)"}
        for key, label in labels.items():
            p, l = best["project", key], best["librosa", key]
            print(f"{label:<30} {p:>16.1f} {l:>16.1f} {p / l:>6.2f}x")
        print(f"parity: max |log-mel diff| = {diff.max():.2e}, mean = {diff.mean():.2e} "
              f"(log-mel range {ref.min():.1f} .. {ref.max():.1f})")


if __name__ == "__main__":
    main()
