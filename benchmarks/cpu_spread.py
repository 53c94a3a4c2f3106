"""Does another CPU give the same outputs? The pipeline from scratch under emulated CPUs, compared stage by stage.

No second machine is needed. A *setting* is an emulated CPU:

* ``native`` — this CPU (2 cores here);
* ``avx2`` / ``sse`` — each library's own instruction-set ceiling lowered (torch's ATEN_CPU_CAPABILITY, oneDNN's
  ONEDNN_MAX_CPU_ISA, MKL's MKL_ENABLE_INSTRUCTIONS, numpy's NPY_DISABLE_CPU_FEATURES, OPENBLAS_CORETYPE): the
  kernels an AVX2-only or a pre-AVX2 processor would make them pick. With ``cpu.kernels: avx2`` the Snakefile
  pins these same variables, so under pinning these settings test that the inherited environment cannot
  change the kernels;
* ``1core`` — ``taskset -c 0`` and ``--cores 1``: a one-core machine (the feature jobs get one clip thread
  instead of two, Snakemake sets every *_NUM_THREADS to 1);
* ``qemu-haswell`` / ``qemu-epyc`` — every job runs under ``qemu-x86_64 -cpu Haswell-v4`` (Intel) or
  ``EPYC-Rome-v2`` (AMD): a real other CPUID, AVX2 without AVX-512, another vendor and cache layout (needs
  qemu-user; ~50x slower, so use ``--size tiny``). QEMU computes rcpps/rsqrtps exactly where hardware
  approximates (benchmarks/cpu_kernels.py), so a difference seen only under QEMU may be QEMU's.

Each (cpu.kernels, setting) runs the pipeline once in its own folder under ``--out``; every output file is
hashed (provenance records aside: they name the folder) and compared with the first setting of the same
cpu.kernels, stage by stage; with ``--size demo`` the metrics are compared number by number as well
(heatedasc.compare). A repeat of the first setting shows that a rerun is bit-exact.

    python benchmarks/cpu_spread.py --out /tmp/spread                                   # demo, pinned + native
    python benchmarks/cpu_spread.py --out /tmp/spread --kernels avx2 --settings native 1core
    python benchmarks/cpu_spread.py --out /tmp/q --size tiny --kernels avx2 --settings native qemu-haswell qemu-epyc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from heatedasc.compare import differences  # noqa: E402

EMULATE = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell"},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Nehalem"},
    "1core": {},
    "qemu-haswell": {},
    "qemu-epyc": {},
}
QEMU_CPU = {"qemu-haswell": "Haswell-v4", "qemu-epyc": "EPYC-Rome-v2"}
# The tiny pipeline of tests/test_workflow.py (1 training epoch), for slow settings.
TINY = {
    "data": {"duration_s": 0.5},
    "synth": {"enabled": True, "seed": 3, "clip_seconds": 0.5, "train_parallel_per_scene": 2,
              "train_a_only_per_scene": 2, "evaluate_parallel_per_scene": 1, "evaluate_a_only_per_scene": 1},
    "features": {"n_mels": 32},
    "execution": {"features": {"batch_size": 16}},
    "train": {"epochs": 1, "batch_size": 16},
    "sweep": {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal", "ce"], "seed": [0]},
    "report": {"fig2_temperatures": [1]},
    "resources": {"train": {"cpus_per_task": 1}, "features": {"cpus_per_task": 2}, "default": {"cpus_per_task": 1}},
}
# Output folders by stage, in pipeline order.
STAGES = (
    ("synthesize", "data/synthetic"),
    ("prepare", "results/prepared"),
    ("coefficients", "results/coefficients"),
    ("features", "results/features"),
    ("runs", "results/runs"),
    ("report", "results/tables"),
    ("report", "results/figures"),
    ("report", "results/metrics"),
)
NOT_CONTENT = ("provenance.json", "epoch_seconds.csv", ".snakemake_timestamp")


def stage_hashes(workdir: Path) -> dict[str, dict[str, str]]:
    """{stage: {relative path: sha256}} of every output file (provenance records and timings aside)."""
    out: dict[str, dict[str, str]] = {}
    for stage, folder in STAGES:
        root = workdir / folder
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for f in files:
            if f.name.endswith(NOT_CONTENT):
                continue
            out.setdefault(stage, {})[f.relative_to(workdir).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def stable_cpu_records(workdir: Path) -> set[str]:
    """The distinct `cpu` entries of the stable provenance records (one, when every job was pinned alike)."""
    found = set()
    for f in (workdir / "results").rglob("*provenance.json"):
        found.add(json.dumps(json.loads(f.read_text()).get("cpu"), sort_keys=True))
    return found


def _qemu_python(workdir: Path, cpu: str) -> Path:
    """A `python` that runs the venv's interpreter under qemu-x86_64 -cpu <cpu> (every job execs it)."""
    if not shutil.which("qemu-x86_64"):
        raise SystemExit("qemu-x86_64 not found (apt-get install qemu-user)")
    wrapper = workdir / "qemu-python"
    wrapper.write_text(f'#!/bin/sh\nexec qemu-x86_64 -cpu {cpu} {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def run_pipeline(workdir: Path, *, setting: str, kernels: str, size: str, cores: int, target: str,
                 threads: int = 1) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    override: dict = json.loads(json.dumps(TINY)) if size == "tiny" else {}
    override.setdefault("data", {})["root"] = "data/synthetic"  # relative to the workdir: no path in any output
    override["cpu"] = {"kernels": kernels, "threads": threads}
    (workdir / "override.yaml").write_text(yaml.safe_dump(override))
    configs = [str(REPO / "params.yaml")] + ([str(REPO / "config" / "smoke.yaml")] if size == "demo" else [])
    env = {**os.environ, **EMULATE[setting]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    n_cores = 1 if setting == "1core" else cores
    args = [target, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", str(n_cores),
            "--logger", "heatedasc", "--configfile", *configs, str(workdir / "override.yaml")]
    if setting in QEMU_CPU:
        # Snakemake runs every job with sys.executable: make that the qemu wrapper (the main process stays native)
        wrapper = _qemu_python(workdir, QEMU_CPU[setting])
        cmd = [sys.executable, "-c", f"import sys; sys.executable = {str(wrapper)!r}; "
               "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()", *args]
    else:
        cmd = [sys.executable, "-m", "snakemake", *args]
    if setting == "1core":
        cmd = ["taskset", "-c", "0", *cmd]
    t0 = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"pipeline failed ({kernels}, {setting}): see {workdir / 'snakemake.log'}")
    return time.perf_counter() - t0


def compare_runs(base: dict, other: dict) -> dict[str, str]:
    """Per stage: 'identical (n files)' or 'k of n files differ'."""
    out = {}
    for stage in dict.fromkeys(s for s, _ in STAGES):
        a, b = base.get(stage, {}), other.get(stage, {})
        if not a and not b:
            continue
        keys = sorted(set(a) | set(b))
        differ = [k for k in keys if a.get(k) != b.get(k)]
        out[stage] = f"identical ({len(keys)})" if not differ else f"{len(differ)} of {len(keys)} differ"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="scratch folder (one pipeline per run inside)")
    ap.add_argument("--size", choices=("demo", "tiny"), default="demo",
                    help="demo: params.yaml + config/smoke.yaml (~4 min on 2 cores); tiny: tests' tiny pipeline")
    ap.add_argument("--kernels", nargs="+", default=["avx2", "native"], choices=("avx2", "native"))
    ap.add_argument("--settings", nargs="+", default=["native", "avx2", "sse", "1core"], choices=list(EMULATE))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="cpu.threads of every run")
    ap.add_argument("--target", default="all", help="Snakemake target (e.g. features_all for the CPU stages)")
    ap.add_argument("--no-repeat", action="store_true", help="skip the bit-exactness repeat of the first setting")
    args = ap.parse_args(argv)
    rows = []
    for kernels in args.kernels:
        runs = list(args.settings) + ([] if args.no_repeat else [f"{args.settings[0]} (again)"])
        hashes, metrics, seconds, cpu_records = {}, {}, {}, {}
        for name in runs:
            setting = name.split()[0]
            workdir = args.out / f"{kernels}-{setting}{'-again' if 'again' in name else ''}"
            if workdir.exists():
                shutil.rmtree(workdir)
            seconds[name] = run_pipeline(workdir, setting=setting, kernels=kernels, size=args.size,
                                         cores=args.cores, target=args.target, threads=args.threads)
            hashes[name] = stage_hashes(workdir)
            summary = workdir / "results" / "metrics.json"
            metrics[name] = json.loads(summary.read_text()) if summary.is_file() else None
            cpu_records[name] = stable_cpu_records(workdir)
            print(f"cpu.kernels {kernels}, {name}: {seconds[name]:.0f} s", flush=True)
        base = runs[0]
        for name in runs:
            row = {"kernels": kernels, "setting": name, "seconds": round(seconds[name], 1),
                   "stages": compare_runs(hashes[base], hashes[name]),
                   "stable_cpu_record_same": cpu_records[name] == cpu_records[base] and len(cpu_records[name]) == 1}
            if metrics[base] is not None and metrics[name] is not None:
                diffs = differences(metrics[base], metrics[name])
                points = [d.points for d in diffs if d.points is not None]
                row["numbers_differing"], row["max_pp"] = len(diffs), max(points, default=0.0)
            rows.append(row)
    (args.out / "spread.json").write_text(json.dumps(rows, indent=2) + "\n")
    stages = list(dict.fromkeys(s for r in rows for s in r["stages"]))
    print(f"\nagainst the first setting of each cpu.kernels ({args.size}):")
    print(f"{'kernels':<8}{'setting':<18}{'time s':>7}" + "".join(f"{s:>22}" for s in stages) + "   metrics")
    for r in rows:
        m = f"{r['numbers_differing']} differ, max {r['max_pp']:.2f} pp" if "numbers_differing" in r else "-"
        print(f"{r['kernels']:<8}{r['setting']:<18}{r['seconds']:>7.0f}"
              + "".join(f"{r['stages'].get(s, '-'):>22}" for s in stages) + f"   {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
