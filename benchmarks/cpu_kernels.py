"""Which library kernels change their output bits with the CPU: one sha256 per operation of the data path.

Each operation the pipeline's CPU stages and CPU training use (numpy ufuncs and reductions, numpy's OpenBLAS,
scipy's filters, torch's ATen vector kernels, MKL's FFT and GEMM, oneDNN's convolutions, torchaudio's resampler,
and the project's own mel filterbank / log-mel / training step) runs on fixed inputs; the output bytes are hashed.
``--probe`` runs that in this process and prints JSON. Without it, the probe runs in one fresh process per
emulated CPU (``--settings``), each with or without the pinned environment of ``heatedasc.pinning`` (``--pin``),
and the table shows, per operation, which settings agree with the first one.

Emulation: ``native`` is this CPU; ``avx2``/``sse`` lower each library's own instruction-set ceiling (what an
AVX2-only or a pre-AVX2 processor would make them choose), ``1core`` runs under ``taskset -c 0`` with the
machine's default thread counts; ``qemu-haswell``/``qemu-epyc`` run the probe under ``qemu-x86_64 -cpu ...``
(a real other CPUID: Intel Haswell, or AMD EPYC-Rome, both AVX2 without AVX-512; needs qemu-user; ~50x slower).

    python benchmarks/cpu_kernels.py --settings native avx2 sse 1core             # unpinned: what differs
    python benchmarks/cpu_kernels.py --pin avx2 --settings native avx2 1core      # pinned: all identical?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

sys.path.insert(0, str(REPO / "benchmarks"))
from cpu_spread import EMULATE, QEMU_CPU  # noqa: E402  (the emulated CPUs: one list for both benchmarks)


def _h(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(a.contiguous().numpy() if hasattr(a, "contiguous") else a).cast("B"))
    return h.hexdigest()[:12]


def probe(threads: int) -> dict:
    import numpy as np
    import scipy.signal
    import torch
    import torchaudio.functional as AF

    from heatedasc.dsp import mel_filterbank
    from heatedasc.features import LogMelExtractor
    from heatedasc.losses import heated_softmax, make_loss
    from heatedasc.model import ASCNet
    from heatedasc.train import l2_penalty, make_optimizer

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {}
    x64 = rng.uniform(0.1, 10.0, 100_000)
    out["numpy exp f64"] = _h(np.exp(x64))
    out["numpy log f64"] = _h(np.log(x64))
    out["numpy sin f64"] = _h(np.sin(x64))
    out["numpy log10 f64"] = _h(np.log10(x64))
    x32 = x64.astype(np.float32)
    out["numpy exp/log f32"] = _h(np.exp(x32), np.log(x32))
    m = rng.standard_normal((256, 20_000))
    out["numpy mean/var f64"] = _h(m.mean(axis=1), ((m - m.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 100))
    out["numpy matmul f64 (OpenBLAS)"] = _h(a @ b)
    out["numpy matmul f32 (OpenBLAS)"] = _h(a.astype(np.float32) @ b.astype(np.float32))
    sig = rng.standard_normal(44_100)
    out["scipy lfilter"] = _h(scipy.signal.lfilter([0.2, 0.3, 0.1], [1.0, -0.5, 0.1], sig))
    out["scipy resample_poly"] = _h(scipy.signal.resample_poly(sig, 160, 147))
    out["numpy fft"] = _h(np.fft.irfft(np.fft.rfft(sig) * 1.5, sig.size))

    t = torch.from_numpy(rng.standard_normal((128, 2048)).astype(np.float32))
    window = torch.hann_window(2048, periodic=True)
    with torch.inference_mode():
        spec = torch.view_as_real(torch.fft.rfft(t * window, dim=-1))
        out["torch rfft (MKL)"] = _h(spec)
        re, im = spec[..., 0], spec[..., 1]
        mag = torch.addcmul(re * re, im, im).sqrt_()
        out["torch addcmul+sqrt (ATen)"] = _h(mag)
        out["torch log (ATen)"] = _h(torch.log(mag + 1e-7))
        out["torch mean f64 (ATen)"] = _h(mag.T.reshape(2, 1025, 64).mean(dim=2, dtype=torch.float64))
        w = torch.from_numpy(rng.standard_normal((600, 40)).astype(np.float32))
        out["torch matmul f32 (MKL)"] = _h(mag[:, 100:700] @ w)
        wave48 = torch.from_numpy(rng.standard_normal(48_000).astype(np.float32))
        out["torchaudio resample"] = _h(AF.resample(wave48, 48_000, 44_100))
        out["mel filterbank (dsp)"] = _h(mel_filterbank(44_100, 2048, 64, 0.0, 22_050.0, dtype=torch.float64))
        coefs = {d: np.exp(0.3 * np.sin(np.linspace(0, 8, 1025) + i)) for i, d in enumerate("abc")}
        ex = LogMelExtractor(sample_rate=44_100, n_fft=2048, hop_length=512, n_mels=64, f_min=0.0, f_max=22_050.0,
                             log_offset=1e-7, remove_dc=True, coefficients=coefs)
        wave = torch.from_numpy(rng.standard_normal(44_100).astype(np.float32) * 0.1)
        out["log-mel clip (features)"] = _h(ex.clip_log_mel(wave, 1))

    torch.manual_seed(0)
    model = ASCNet(n_classes=10, bn_momentum_keras=0.9)
    opt = make_optimizer(model, {"lr": 0.5, "rho": 0.95, "eps": 1e-7})
    loss_fn = make_loss("focal", temperature=10.0)
    xb = torch.from_numpy(rng.standard_normal((8, 1, 64, 44)).astype(np.float32))
    yb = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(0, 10, 8)), 10).float()
    with torch.no_grad():
        out["conv2d forward (oneDNN)"] = _h(model.blocks[0][0](xb))
        out["heated softmax (project)"] = _h(heated_softmax(model(xb), 10.0))
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(model(xb), yb) + l2_penalty(model, 1e-5)
        loss.backward()
        opt.step()
    out["3 training steps (project)"] = _h(*[p.detach() for p in model.parameters()], *model.buffers())
    return out


def runtime_info() -> dict:
    from heatedasc.pinning import in_effect

    return in_effect()


def run_setting(name: str, pin: str | None, threads: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(EMULATE[name])
    cmd = [sys.executable, __file__, "--probe", "--threads", str(threads)]
    if pin:
        from heatedasc.pinning import environment

        env.update(environment({"kernels": pin, "threads": threads}))
    env.update(extra or {})
    if name == "1core":
        cmd = ["taskset", "-c", "0", *cmd]
    elif name in QEMU_CPU:
        if not shutil.which("qemu-x86_64"):
            raise SystemExit("qemu-x86_64 not found (apt-get install qemu-user)")
        cmd = ["qemu-x86_64", "-cpu", QEMU_CPU[name], *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", action="store_true", help="run the operations here and print JSON")
    ap.add_argument("--settings", nargs="+", default=["native", "avx2", "sse", "1core"], choices=list(EMULATE))
    ap.add_argument("--pin", default=None, help="cpu.kernels value to pin to (e.g. avx2); default: no pinning")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (with --pin: cpu.threads)")
    ap.add_argument("--json", type=Path, help="write every setting's hashes here")
    ap.add_argument("--env", nargs="*", default=[], metavar="VAR=VALUE", help="set after pinning (experiments)")
    args = ap.parse_args(argv)
    if args.probe:
        result = {"hashes": probe(args.threads), "in_effect": runtime_info()}
        print(json.dumps(result))
        return 0
    extra = dict(item.split("=", 1) for item in args.env)
    results = {name: run_setting(name, args.pin, args.threads, extra) for name in args.settings}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    base = args.settings[0]
    ops = list(results[base].get("hashes", {}))
    print(f"pinning: {args.pin or 'off'} {' '.join(args.env)}; threads {args.threads}; "
          f"'=' same bytes as {base}, else the hash prefix")
    print(f"{'operation':<30}" + "".join(f"{s:>14}" for s in args.settings))
    for op in ops:
        ref = results[base]["hashes"][op]
        cells = []
        for s in args.settings:
            h = results[s].get("hashes", {}).get(op, "error")
            cells.append(h[:8] if s == base else ("=" if h == ref else h[:8]))
        print(f"{op:<30}" + "".join(f"{c:>14}" for c in cells))
    for s in args.settings:
        if "error" in results[s]:
            print(f"{s}: {results[s]['error']}")
        else:
            differ = sum(results[s]["hashes"][op] != results[base]["hashes"][op] for op in ops)
            print(f"{s}: {differ} of {len(ops)} operations differ; in effect: {results[s]['in_effect']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
