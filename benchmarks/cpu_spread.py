"""How far the demo's numbers move on another CPU: the measurement behind `report.reference_tolerance_pp`.

No second machine is needed: torch, oneDNN, MKL and numpy each pick their vector kernels from the CPU at
run time and can be told to use an older instruction set, which rounds differently — as another processor
would. The demo (params.yaml + config/smoke.yaml, synthesis included) runs end to end once per setting in a
scratch folder; every number of each results/metrics.json is compared with the first setting's
(heatedasc.compare), and a last run repeats the first setting to show it is bit-exact.

    python benchmarks/cpu_spread.py --out /tmp/spread            # ~4 min per setting on 2 cores
    python benchmarks/cpu_spread.py --out /tmp/spread --settings native avx2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from heatedasc.compare import differences  # noqa: E402

AVX512_NUMPY = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
SETTINGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NPY_DISABLE_CPU_FEATURES": AVX512_NUMPY},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "NPY_DISABLE_CPU_FEATURES": AVX512_NUMPY + " AVX2 FMA3 AVX F16C AVX512_KNL AVX512_KNM"},
}


def run_demo(workdir: Path, extra_env: dict, cores: int) -> tuple[dict, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **extra_env, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "params.yaml"), str(REPO / "config" / "smoke.yaml"),
           "--cores", str(cores), "--logger", "heatedasc"]
    t0 = time.perf_counter()
    log = workdir / "snakemake.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"demo failed under {extra_env or 'native'}: see {log}")
    return json.loads((workdir / "results" / "metrics.json").read_text()), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="scratch folder (one demo per setting inside)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--no-repeat", action="store_true", help="skip the bit-exactness repeat of the first setting")
    args = ap.parse_args(argv)
    runs = [(name, SETTINGS[name]) for name in args.settings]
    if not args.no_repeat:
        runs.append((f"{args.settings[0]} (again)", SETTINGS[args.settings[0]]))
    results = {}
    for i, (name, env) in enumerate(runs):
        summary, seconds = run_demo(args.out / f"{i}-{name.split()[0]}", env, args.cores)
        results[name] = summary
        print(f"{name}: demo in {seconds:.0f} s", flush=True)
    base_name = runs[0][0]
    rows = []
    for name, summary in results.items():
        if name == base_name:
            continue
        diffs = differences(results[base_name], summary)
        points = [d.points for d in diffs if d.points is not None]
        exact_only = [d.key for d in diffs if d.points is None]
        rows.append({"setting": name, "numbers_differing": len(diffs), "max_pp": max(points, default=0.0),
                     "mean_pp": sum(points) / len(points) if points else 0.0, "non_accuracy_differences": exact_only})
    (args.out / "spread.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nagainst {base_name}:")
    print(f"{'setting':<16}{'numbers differing':>18}{'max |Δ| pp':>12}{'mean |Δ| pp':>13}  other")
    for r in rows:
        print(f"{r['setting']:<16}{r['numbers_differing']:>18}{r['max_pp']:>12.2f}{r['mean_pp']:>13.2f}  "
              f"{', '.join(r['non_accuracy_differences']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
