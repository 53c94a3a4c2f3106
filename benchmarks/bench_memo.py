"""144 processes hashing the same inputs at once, as the paper sweep's training jobs do when they start together:
against one shared memo file, and without a memo (the baseline, run in the same process). Counts errors and wrong
digests (both must be 0) and prints the wall times and their ratio.

    python benchmarks/bench_memo.py --out /tmp/memo                 # 144 processes, 8 files of 8 MB
    python benchmarks/bench_memo.py --out /tmp/memo --processes 24 --mb 2
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

REPO = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
from heatedasc.hashing import file_digest
print(json.dumps({p: file_digest(p) for p in sys.argv[1:]}))
"""


def run(files: list[str], processes: int, memo: str) -> tuple[float, int, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HEATEDASC_HASH_CACHE": memo, "HEATEDASC_DVC_STATE": "off"}
    truth = {f: hashlib.md5(Path(f).read_bytes()).hexdigest() for f in files}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(processes)]
    errors = wrong = 0
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0 or err.strip():
            errors += 1
            continue
        wrong += sum(d != truth[f] for f, d in json.loads(out).items())
    return time.perf_counter() - t0, errors, wrong


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--processes", type=int, default=144)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mb", type=int, default=8)
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    files = []
    for i in range(args.files):
        f = args.out / f"input{i}.bin"
        f.write_bytes(os.urandom(args.mb << 20))
        files.append(str(f))
    shared = run(files, args.processes, str(args.out / "memo.sqlite"))
    warm = run(files, args.processes, str(args.out / "memo.sqlite"))
    baseline = run(files, args.processes, "off")
    print(f"{args.processes} processes x {args.files} files of {args.mb} MB, {os.cpu_count()} cores")
    print(f"{'':<34}{'seconds':>9}{'errors':>8}{'wrong digests':>15}")
    for name, (sec, err, wrong) in (("no memo (baseline)", baseline), ("one shared memo, cold", shared),
                                    ("one shared memo, warm", warm)):
        print(f"{name:<34}{sec:>9.1f}{err:>8}{wrong:>15}")
    print(f"warm memo vs no memo: {baseline[0] / warm[0]:.1f}x faster")
    shutil.rmtree(args.out, ignore_errors=True)
    return 1 if any(r[1] or r[2] for r in (shared, warm, baseline)) else 0


if __name__ == "__main__":
    sys.exit(main())
