"""How long `snakemake -n` takes on a paper-size tree right after `dvc pull`: every file new to the hash memo, dates
in DVC's order. No real audio: synthetic bytes of the paper's sizes at every path the paper DAG writes, and records
describing them (made with `snakemake --touch`, which records what is there), so the plan does the same work it would
on real results. The tree is then put under DVC (`dvc add results`, copy link type), removed and checked out again as
a pull would, and planned three ways:

* after the checkout (DVC's state knows every file it wrote: nothing is read),
* the same with DVC's state turned off and the page cache dropped (every byte read from disk),
* again (the memo warm).

    python benchmarks/bench_plan.py --out /tmp/plan               # paper size: ~42 GB, twice that with DVC's cache
    python benchmarks/bench_plan.py --out /tmp/plan --scale 0.01  # the same tree with 1 % of the clips

The raw dataset is the user's and stays where it is across `git pull && dvc pull`, so by default its files are small
(`--raw-bytes`); `--raw-bytes 1323000` gives them their real size (then the first plan also hashes ~20 GB more).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from heatedasc.tau import SCENES  # noqa: E402

CLIP_BYTES = 441_000 * 3 + 44        # a 10 s 44.1 kHz mono 24-bit wav (raw and prepared)
FEATURE_BYTES = 256 * 862 * 2        # one float16 log-mel clip
PAPER = {"train": {"a": 9185, "b": 540, "c": 540}, "evaluate": {"a": 4185, "b": 540, "c": 540}}
RUN_FILES = {"metrics.json": 4_000, "history.csv": 12_000, "model.pt": 300_000, "embeddings.npz": 4_000_000,
             "predictions.npz": 450_000}


def write(path: Path, size: int, seed: int, block: bytes) -> None:
    """`size` bytes, unique to `seed`, quickly (hash speed does not depend on the bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(seed.to_bytes(8, "little"))
        left = size - 8
        while left > 0:
            chunk = block[: min(left, len(block))]
            fh.write(chunk)
            left -= len(chunk)


def make_tree(out: Path, scale: float, raw_bytes: int) -> dict:
    """The raw TAU layout, the config, and every output of the paper DAG as synthetic bytes."""
    block = os.urandom(1 << 20)
    rows = []
    for split, counts in PAPER.items():
        for device, n in counts.items():
            for i in range(max(3, int(n * scale))):
                scene = SCENES[i % len(SCENES)]
                rows.append((split, f"audio/{scene}-city{i % 10}-{split}{i // 10}-{i}-{device}.wav", scene, device))
    data = out / "data" / "TAU"
    (data / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    folds = {"train": ["filename\tscene_label"], "evaluate": ["filename\tscene_label"], "test": ["filename"]}
    for n, (split, name, scene, device) in enumerate(rows):
        write(data / name, raw_bytes, n, block)
        meta.append(f"{name}\t{scene}\t{name.split('-')[1]}-{name.split('-')[2]}\t{device}")
        folds[split].append(f"{name}\t{scene}")
        if split == "evaluate":
            folds["test"].append(name)
    (data / "meta.csv").write_text("\n".join(meta) + "\n")
    for fold, lines in folds.items():
        (data / "evaluation_setup" / f"fold1_{fold}.csv").write_text("\n".join(lines) + "\n")

    work = out / "work"
    results = work / "results"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = {"data": {"root": str(data)}, "synth": {"enabled": False}}
    (work / "bench.yaml").parent.mkdir(parents=True, exist_ok=True)
    (work / "bench.yaml").write_text(yaml.safe_dump(cfg))
    seed = 10**6
    for n, (_, name, _, _) in enumerate(rows):
        write(results / "prepared" / name, CLIP_BYTES, seed + n, block)
    seed += len(rows)
    small = ["prepared/manifest.csv", "prepared/summary.csv", "prepared/report.json", "coefficients/mean_spectra.npz",
             "coefficients/coefficients.png"]
    corrections = params["sweep"]["correction"]
    for c in corrections:
        small += [f"coefficients/{c}.npz", f"features/{c}/stats.npz", f"features/{c}/train.csv",
                  f"features/{c}/evaluate.csv"]
        for split in ("train", "evaluate"):
            n_rows = sum(1 for r in rows if r[0] == split)
            write(results / "features" / c / f"{split}.npy", n_rows * FEATURE_BYTES, seed, block)
            seed += 1
        for t in params["sweep"]["temperature"]:
            for loss in params["sweep"]["loss"]:
                for s in params["sweep"]["seed"]:
                    run = results / "runs" / c / f"T{t}" / loss / f"seed{s}"
                    for name, size in RUN_FILES.items():
                        write(run / name, size, seed, block)
                        seed += 1
    for rel in small:
        write(results / rel, 20_000, seed, block)
        seed += 1
    n_files = sum(1 for _ in results.rglob("*") if _.is_file())
    size = sum(p.stat().st_size for p in results.rglob("*") if p.is_file())
    return {"work": work, "clips": len(rows), "files": n_files, "bytes": size}


def fill_missing_outputs(work: Path) -> None:
    """Every other output the DAG names (Snakemake's --summary lists them): a small file, a folder holding one, or
    an empty record ("{}", which `--touch` then fills with what is there)."""
    _, out = snakemake(work, "--summary")
    block = os.urandom(1 << 16)
    for n, line in enumerate(out.splitlines()):
        path = line.split("\t", 1)[0]
        if not path.startswith("results/") or (work / path).exists():
            continue
        target = work / path
        if path.endswith("provenance.json"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}\n")
        elif not target.suffix:  # a folder output
            write(target / "part.json", 2_000, n, block)
        else:
            write(target, 20_000, n, block)


def snakemake(work: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(REPO / "params.yaml"), str(work / "bench.yaml")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def drop_page_cache() -> str:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as exc:
        return f"kept ({exc.strerror})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (deleted first)")
    ap.add_argument("--scale", type=float, default=1.0, help="share of the paper's clips (default 1)")
    ap.add_argument("--raw-bytes", type=int, default=4096, help="size of each raw wav (default 4096)")
    ap.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    tree = make_tree(args.out, args.scale, args.raw_bytes)
    work = tree["work"]
    print(f"tree: {tree['clips']} clips, {tree['files']} result files, {tree['bytes'] / 1e9:.1f} GB "
          f"(written in {time.perf_counter() - t0:.0f} s)", flush=True)
    fill_missing_outputs(work)
    touch_s, _ = snakemake(work, "--touch", "--cores", "2", "--quiet", "all")  # records of what is there
    print(f"records made with --touch in {touch_s:.1f} s", flush=True)
    warm0, out0 = snakemake(work, "-n", "--quiet", "rules")
    assert "Nothing to be done" in out0, out0[-2000:]

    # As after `dvc pull`: DVC writes every file anew (the memo knows none of them) and records their MD5s.
    dvc = [sys.executable, "-m", "dvc"]
    quiet = {"capture_output": True, "text": True, "cwd": work, "check": True,
             "env": {**os.environ, "DVC_NO_ANALYTICS": "1"}}
    subprocess.run(["git", "init", "-q"], **quiet)
    subprocess.run(dvc + ["init", "-q"], **quiet)
    subprocess.run(dvc + ["config", "cache.type", "copy"], **quiet)
    t0 = time.perf_counter()
    subprocess.run(dvc + ["add", "-q", "results"], **quiet)
    add_s = time.perf_counter() - t0
    shutil.rmtree(work / "results")
    t0 = time.perf_counter()
    subprocess.run(dvc + ["checkout", "-q"], **quiet)
    checkout_s = time.perf_counter() - t0
    memo = work / ".snakemake" / "heatedasc" / f"hashes-{socket.gethostname()}.sqlite"
    memo.unlink()
    after_pull, out1 = snakemake(work, "-n", "--quiet", "rules")
    assert "Nothing to be done" in out1, out1[-2000:]

    # The same state, read from disk: memo empty again, DVC's state not used, nothing in the page cache.
    memo.unlink()
    rng = random.Random(0)
    now = time.time()
    for p in (work / "results").rglob("*"):
        t = now - rng.random() * 600
        os.utime(p, (t, t))
    cache = drop_page_cache()
    read_all, out2 = snakemake(work, "-n", "--quiet", "rules", env={"HEATEDASC_DVC_STATE": "off"})
    assert "Nothing to be done" in out2, out2[-2000:]
    warm, out3 = snakemake(work, "-n", "--quiet", "rules")
    assert "Nothing to be done" in out3, out3[-2000:]
    print(f"\n(dvc add {add_s:.0f} s, dvc checkout {checkout_s:.0f} s)")
    print(f"{'plan (snakemake -n), paper DAG':<58}{'seconds':>10}")
    print(f"{'after dvc checkout (memo empty, DVC state used)':<58}{after_pull:>10.1f}")
    print(f"{'memo empty, DVC state off, every byte read':<58}{read_all:>10.1f}   page cache {cache}")
    print(f"{'again (memo warm)':<58}{warm:>10.1f}")
    print(f"{'read-all / after-checkout':<58}{read_all / after_pull:>10.1f}x")
    print(f"disk read rate of the read-all plan: {tree['bytes'] / 1e9 / max(read_all - warm, 1e-9):.2f} GB/s")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
