"""GPU benchmark: what one paper run costs on this machine. Timing only: whether the fast settings keep the
numbers (compiled vs eager, bf16 vs fp32, determinism, resume, the CUDA feature path) is tests/test_gpu.py's
job (`pytest -m gpu`); `make gpu-check` runs both.

One script a user with a GPU runs (needs only torch, numpy, pandas, pyyaml, tqdm and heatedasc). With
params.yaml's model/loss/train sections, config/gpu-fast.yaml merged on top (bf16 autocast and a compiled
step; --configfile changes it), it measures, on synthetic caches of the paper's shapes
(fold1_train 10,265 and fold1_evaluate 5,265 clips of 256 x 862):

  throughput    train_epoch samples/s: the configured step (compiled, autocast) and variants (eager
                bf16/fp16/fp32, compiled fp16, CUDA graphs), each also as a multiple of the eager fp32
                baseline timed in the same process; evaluation time at several batch sizes; cold vs warm
                compile (a fresh process each, same TORCHINDUCTOR_CACHE_DIR); a kernel profile
  run           run_training for a few epochs at full size: s/epoch, first epoch, peak memory, minutes
                per 150-epoch run, GPU-hours per sweep, multiple of the bandwidth floor
  features      LogMelExtractor's device path: clips/s with and without host<->device copies
  concurrency   N processes training on the one device at once: aggregate samples/s

Everything goes to --out (gpu_check.log, *.csv, *.json, summary.md); the short table is printed last.

    python benchmarks/gpu_check.py --out gpu_check                    # several minutes on one H200 (not yet timed)
    python benchmarks/gpu_check.py --out gpu_check --sections run,throughput
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/gc # tiny shapes, ~1 min, no GPU needed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heatedasc.losses import make_loss
from heatedasc.model import ASCNet, block_output_shapes
from heatedasc.runtime import COMPILE_DEVICES, cuda_diagnosis, nvidia_driver, resolve_device, resolve_runtime
from heatedasc.synthetic_inputs import SCENE_COUNT, coloured_clips, synthetic_batch, write_synthetic_cache
from heatedasc.train import EXECUTION_KEYS, BatchRunner, make_optimizer, run_training, train_epoch

REPO = Path(__file__).resolve().parents[1]
# The settings timed by default: params.yaml (the paper: fp32, eager) with the GPU speed override on top (bf16
# autocast + a compiled step, the deviation whose agreement with fp32 tests/test_gpu.py checks).
FAST_OVERRIDE = REPO / "config" / "gpu-fast.yaml"
SECTIONS = ("throughput", "run", "features", "concurrency")
PAPER_TRAIN, PAPER_EVAL, PAPER_EPOCHS = 10_265, 5_265, 150
# Traffic model of the floor (the measured note's assumption): a training step moves each conv block's
# activations ~15 times as 2-byte values (forward, BN/ReLU, backward, grads); an evaluation pass ~5 times.
TRAIN_PASSES, EVAL_PASSES, ACT_BYTES = 15, 5, 2

log = logging.getLogger("gpu_check")


# -------------------------------------------------------------------------------------------- shapes
def sizes(quick: bool) -> dict:
    # signal: the class texture's mean amplitude. On CPU at 64 x 128, 0.6 climbed to ~65% accuracy in 50 steps
    # (0.3: chance, 1.0: 71%); the evidence in a clip grows as amplitude^2 x sqrt(pixels), so the paper's
    # 27x more pixels get 0.6 x 27^-1/4 ~ 0.3.
    if quick:
        return dict(n_mels=24, n_frames=32, train=96, eval=48, batch=16, eval_batch=32,
                    epochs_run=2, tp_clips=64, tp_batches=3, tp_warmup=1, eval_sizes=(16, 32),
                    feat_clips=3, feat_seconds=1.0, feat_mels=64, feat_repeats=2, conc_clips=64, conc_batches=3,
                    signal=1.0, copy_mb=64)
    return dict(n_mels=256, n_frames=862, train=PAPER_TRAIN, eval=PAPER_EVAL,
                batch=64, eval_batch=None, epochs_run=3, tp_clips=2_560, tp_batches=30, tp_warmup=2,
                eval_sizes=(128, 512), feat_clips=16, feat_seconds=10.0, feat_mels=None, feat_repeats=5,
                conc_clips=1_024, conc_batches=40, signal=0.3, copy_mb=2048)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ synthetic data




# ----------------------------------------------------------------------------------------- helpers
def load_params(path: Path, configfiles=()) -> dict:
    """params.yaml with the override files merged on top (Snakemake's --configfile semantics)."""
    from heatedasc.config import merge_config_files

    return merge_config_files([path, *configfiles])


def train_config(params: dict, args, sz: dict, **overrides) -> dict:
    """params.yaml's train section and its speed-only execution.train settings, as one dict."""
    cfg = {**params["train"], **params["execution"]["train"]}
    cfg.update(device=args.device, batch_size=sz["batch"])
    if sz["eval_batch"]:
        cfg["eval_batch_size"] = sz["eval_batch"]
    cfg.update(overrides)
    return cfg


def model_config(params: dict) -> dict:
    return dict(params["model"])


def floor_rates(model_cfg: dict, shape: tuple[int, int], bandwidth: float) -> dict:
    """Bandwidth floor: activations per clip x passes x 2 bytes at the measured device copy rate."""
    model = ASCNet(n_classes=SCENE_COUNT, **model_cfg)
    activations = sum(int(np.prod(s)) for s in block_output_shapes(model, shape))
    train_bytes = activations * TRAIN_PASSES * ACT_BYTES
    eval_bytes = activations * EVAL_PASSES * ACT_BYTES
    epoch_s = (PAPER_TRAIN * train_bytes + PAPER_EVAL * eval_bytes) / bandwidth
    return {"activations_per_clip": activations, "train_bytes_per_clip": train_bytes,
            "floor_samples_per_s": bandwidth / train_bytes, "floor_epoch_s": epoch_s,
            "floor_run_min": PAPER_EPOCHS * epoch_s / 60}


def copy_bandwidth(device: torch.device, megabytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    n = megabytes * 2**20 // 4
    a = torch.empty(n, device=device, dtype=torch.float32).uniform_()
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    _sync(device)
    return 2 * a.numel() * 4 * reps / (time.perf_counter() - t0)


def make_runner(model_cfg: dict, device: torch.device, amp_dtype, channels_last: bool, compile_mode, seed: int = 0):
    torch.manual_seed(seed)
    model = ASCNet(n_classes=SCENE_COUNT, **model_cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, BatchRunner(model, device, amp_dtype, channels_last, compile_mode)


def time_training(x: torch.Tensor, labels: torch.Tensor, *, model_cfg: dict, train_cfg: dict, device: torch.device,
                  amp_dtype, channels_last: bool, compile_mode, batch_size: int, warmup: int, batches: int,
                  profile_to: Path | None = None) -> dict:
    """samples/s of train_epoch on device-resident clips (after `warmup` batches that compile and tune)."""
    model, runner = make_runner(model_cfg, device, amp_dtype, channels_last, compile_mode)
    optimizer = make_optimizer(model, train_cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    onehot = torch.nn.functional.one_hot(labels, SCENE_COUNT).float().to(device)
    loss_fn = make_loss("focal", temperature=10.0, gamma=1.0)
    rng = np.random.default_rng(0)
    common = dict(batch_size=batch_size, mixup_alpha=float(train_cfg["mixup_alpha"]), np_rng=rng, loss_fn=loss_fn,
                  weight_decay_l2=float(train_cfg["weight_decay_l2"]))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    train_epoch(model, optimizer, scaler, runner, x, onehot, torch.randint(0, len(x), (warmup * batch_size,), generator=gen),
                **common)
    _sync(device)
    warm_s = time.perf_counter() - t0
    order = torch.randint(0, len(x), (batches * batch_size,), generator=gen)
    t0 = time.perf_counter()
    train_epoch(model, optimizer, scaler, runner, x, onehot, order, **common)
    _sync(device)
    rate = len(order) / (time.perf_counter() - t0)
    if profile_to is not None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        sort = "cpu_time_total"
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            sort = "self_device_time_total"
        with torch.profiler.profile(activities=activities) as prof:
            train_epoch(model, optimizer, scaler, runner, x, onehot, order[: 8 * batch_size], **common)
            _sync(device)
        profile_to.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    return {"samples_per_s": rate, "warmup_s": warm_s}


def time_eval(x: torch.Tensor, *, model_cfg: dict, device: torch.device, amp_dtype, channels_last: bool, compile_mode,
              batch_size: int) -> float:
    """Seconds to evaluate PAPER_EVAL clips (scaled from len(x)), after one warm-up pass."""
    _, runner = make_runner(model_cfg, device, amp_dtype, channels_last, compile_mode)
    runner.infer(x, None, batch_size)
    _sync(device)
    t0 = time.perf_counter()
    runner.infer(x, None, batch_size)
    _sync(device)
    return (time.perf_counter() - t0) * PAPER_EVAL / len(x)


def history(out_dir: Path) -> pd.DataFrame:
    """history.csv with the seconds per epoch (kept beside it in train.EPOCH_SECONDS) joined in."""
    from heatedasc.train import EPOCH_SECONDS

    return pd.read_csv(out_dir / "history.csv").merge(pd.read_csv(out_dir / EPOCH_SECONDS), on="epoch")


def run(caches: tuple, out_dir: Path, *, params: dict, train_cfg: dict, seed: int = 0, **kw) -> dict:
    (train_npy, train_csv), (eval_npy, eval_csv) = caches
    return run_training(train_npy=train_npy, train_index=train_csv, eval_npy=eval_npy, eval_index=eval_csv,
                        out_dir=out_dir, correction="ref_abc", temperature=10.0, loss="focal", seed=seed,
                        model_cfg=model_config(params), loss_cfg=dict(params["loss"]),
                        train_cfg={k: v for k, v in train_cfg.items() if k not in EXECUTION_KEYS},
                        execution_cfg={k: v for k, v in train_cfg.items() if k in EXECUTION_KEYS},
                        threads=torch.get_num_threads(), progress=False, **kw)


# ---------------------------------------------------------------------------------------- sections
def section_throughput(ctx: dict) -> dict:
    args, sz, device, params, out = ctx["args"], ctx["sizes"], ctx["device"], ctx["params"], ctx["out"]
    cfg = train_config(params, args, sz)
    runtime = resolve_runtime(cfg, device)
    shape = (sz["n_mels"], sz["n_frames"])
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, SCENE_COUNT, sz["tp_clips"]))
    devices = np.array(list("aaabc"))[np.arange(sz["tp_clips"]) % 5]
    x = torch.cat([synthetic_batch(labels[s:s + 256].numpy(), devices[s:s + 256], shape, signal=sz["signal"], seed=s,
                                   device=device).half() for s in range(0, sz["tp_clips"], 256)])
    cl = runtime.channels_last
    variants = [("configured", runtime.amp_dtype, runtime.compile_mode)]
    compiled = cfg["compile_mode"] if device.type == "cuda" else "default"
    if device.type == "cuda":
        variants += [("eager bf16", torch.bfloat16, None), ("eager fp16", torch.float16, None),
                     ("compiled fp16" if runtime.amp_dtype != torch.float16 else "compiled bf16",
                      torch.float16 if runtime.amp_dtype != torch.float16 else torch.bfloat16, compiled),
                     ("compiled + CUDA graphs (reduce-overhead)", runtime.amp_dtype, "reduce-overhead"),
                     ("eager fp32 (no TF32)", None, None)]
    else:  # CPU: training is eager fp32 here; the compiled step is timed too so this path cannot rot
        variants += [("compiled fp32 (CPU, forced)", None, "default")]
    rows = []
    for name, amp_dtype, mode in variants:
        fp32 = amp_dtype is None and device.type == "cuda"
        with _no_tf32(fp32):
            r = time_training(x, labels, model_cfg=model_config(params), train_cfg=cfg, device=device, amp_dtype=amp_dtype,
                              channels_last=cl, compile_mode=mode, batch_size=sz["batch"], warmup=sz["tp_warmup"],
                              batches=sz["tp_batches"], profile_to=out / "profile.txt" if name == "configured" else None)
        rows.append({"variant": name, "dtype": _dtype_name(amp_dtype), "compile": mode or "off", **r})
        log.info("throughput %-42s %9.1f samples/s (warm-up %.1f s)", name, r["samples_per_s"], r["warmup_s"])
    baseline = next(r for r in rows if r["dtype"] == "fp32" and r["compile"] == "off")  # timed in this process
    for r in rows:
        r["vs_eager_fp32"] = r["samples_per_s"] / baseline["samples_per_s"]
    eval_rows = []
    for bs in sz["eval_sizes"]:
        s = time_eval(x, model_cfg=model_config(params), device=device, amp_dtype=runtime.amp_dtype, channels_last=cl,
                      compile_mode=runtime.compile_mode, batch_size=bs)
        eval_rows.append({"eval_batch_size": bs, "seconds_per_5265_clips": s})
        log.info("evaluation batch %d: %.3f s per %d clips", bs, s, PAPER_EVAL)
    pd.DataFrame(rows).to_csv(out / "throughput.csv", index=False)
    pd.DataFrame(eval_rows).to_csv(out / "eval_batch.csv", index=False)
    compile_times = compile_cold_warm(ctx)
    return {"variants": rows, "eval": eval_rows, "compile": compile_times}


def compile_cold_warm(ctx: dict) -> dict:
    """First training step in a fresh process, compiled as configured: with an empty cache dir (cold), then
    again with it filled (warm), as the first and later jobs of a sweep that share TORCHINDUCTOR_CACHE_DIR.
    Where training does not compile (CPU) the step is eager: this then only checks the plumbing."""
    out, args = ctx["out"], ctx["args"]
    cache = out / "inductor-cold-warm"
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    times = {"compile_mode": resolve_runtime(train_config(ctx["params"], args, ctx["sizes"]), ctx["device"]).compile_mode}
    for label in ("cold", "warm"):
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--first-step", "--device", args.device,
               "--params", str(args.params), "--configfile", *map(str, args.configfile)] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"compile timing worker failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        times[f"{label}_first_step_s"] = result["first_step_s"]
        times[f"{label}_process_s"] = time.perf_counter() - t0
        log.info("compile %s: first compiled step %.1f s (process %.1f s)", label, result["first_step_s"],
                 times[f"{label}_process_s"])
    (out / "compile_cache.json").write_text(json.dumps(times, indent=1))
    return times


def worker_first_step(args) -> None:
    """In a fresh process: time the first compiled training batch (dynamo + inductor + autotune)."""
    sz = sizes(args.quick)
    params = load_params(args.params, args.configfile)
    device = resolve_device(args.device, "--device")
    cfg = train_config(params, args, sz)
    runtime = resolve_runtime(cfg, device)
    shape = (sz["n_mels"], sz["n_frames"])
    labels = np.arange(sz["batch"]) % SCENE_COUNT
    x = synthetic_batch(labels, np.array(["a"] * sz["batch"]), shape, signal=sz["signal"], seed=0, device=device).half()
    with _no_tf32(runtime.amp_dtype is None and device.type == "cuda"):
        r = time_training(x, torch.from_numpy(labels), model_cfg=model_config(params), train_cfg=cfg, device=device,
                          amp_dtype=runtime.amp_dtype, channels_last=runtime.channels_last,
                          compile_mode=runtime.compile_mode, batch_size=sz["batch"], warmup=1, batches=1)
    print(json.dumps({"first_step_s": r["warmup_s"]}))


def section_run(ctx: dict) -> dict:
    args, sz, device, params, out = ctx["args"], ctx["sizes"], ctx["device"], ctx["params"], ctx["out"]
    caches = ctx["full_caches"]()
    cfg = train_config(params, args, sz, epochs=sz["epochs_run"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run(caches, out / "runs" / "run", params=params, train_cfg=cfg)
    total = time.perf_counter() - t0
    hist = history(out / "runs" / "run")
    hist.to_csv(out / "run_history.csv", index=False)
    first = float(hist["seconds"].iloc[0])
    steady = float(hist["seconds"].iloc[1:].median())
    run_min = (first + (PAPER_EPOCHS - 1) * steady) / 60
    sweep = params["sweep"]
    n_runs = int(np.prod([len(sweep[k]) for k in ("correction", "temperature", "loss", "seed")]))
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    floor = ctx["floor"]
    result = {"first_epoch_s": first, "steady_epoch_s": steady, "wall_s": total, "peak_gpu_gb": peak,
              "minutes_per_paper_run": run_min, "sweep_runs": n_runs, "sweep_gpu_hours": n_runs * run_min / 60,
              "multiple_of_floor": steady / floor["floor_epoch_s"], "train_clips": sz["train"], "eval_clips": sz["eval"]}
    (out / "run.json").write_text(json.dumps(result, indent=1))
    return result
















def section_features(ctx: dict) -> dict:
    """LogMelExtractor's device path: clips/s with the clips already on the device, and with host waveforms copied
    in and features copied out per batch."""
    sz, device, params, out = ctx["sizes"], ctx["device"], ctx["params"], ctx["out"]
    result: dict = {}
    from heatedasc.features import LogMelExtractor

    f = params["features"]
    sr = int(params["data"]["sample_rate"])
    extractor = LogMelExtractor(sample_rate=sr, n_fft=f["n_fft"], hop_length=f["hop_length"],
                                n_mels=sz["feat_mels"] or f["n_mels"], f_min=f["f_min"], f_max=min(float(f["f_max"]), sr / 2),
                                log_offset=f["log_offset"], remove_dc=f["remove_dc"]).to(device)
    batch = 64 if device.type == "cuda" else 4
    host = coloured_clips(batch, sz["feat_seconds"], sr, seed=1)
    index = torch.zeros(batch, dtype=torch.long, device=device)
    on_dev = torch.from_numpy(host).to(device)
    forward = extractor._forward_batched if device.type == "cpu" else extractor.forward
    with torch.inference_mode():
        forward(on_dev, index)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(sz["feat_repeats"]):
            forward(on_dev, index)
        _sync(device)
        result["clips_per_s_on_device"] = batch * sz["feat_repeats"] / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(sz["feat_repeats"]):
            forward(torch.from_numpy(host).to(device), index).cpu().numpy()
        result["clips_per_s_with_copies"] = batch * sz["feat_repeats"] / (time.perf_counter() - t0)
    (out / "features.json").write_text(json.dumps(result, indent=1))
    return result


def concurrency_worker(rank: int, args_ns: dict, barrier, queue) -> None:
    try:
        args = argparse.Namespace(**args_ns)
        sz = sizes(args.quick)
        params = load_params(Path(args.params), args.configfile)
        device = resolve_device(args.device, "--device")
        torch.set_num_threads(1)
        cfg = train_config(params, args, sz)
        runtime = resolve_runtime(cfg, device)
        shape = (sz["n_mels"], sz["n_frames"])
        labels = np.random.default_rng(rank).integers(0, SCENE_COUNT, sz["conc_clips"])
        devices = np.array(list("aaabc"))[np.arange(sz["conc_clips"]) % 5]
        x = torch.cat([synthetic_batch(labels[s:s + 256], devices[s:s + 256], shape, signal=sz["signal"], seed=s,
                                       device=device).half() for s in range(0, sz["conc_clips"], 256)])
        model, runner = make_runner(model_config(params), device, runtime.amp_dtype, runtime.channels_last,
                                    runtime.compile_mode, seed=rank)
        optimizer = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), SCENE_COUNT).float().to(device)
        common = dict(batch_size=sz["batch"], mixup_alpha=float(cfg["mixup_alpha"]), np_rng=np.random.default_rng(rank),
                      loss_fn=make_loss("focal", temperature=10.0), weight_decay_l2=float(cfg["weight_decay_l2"]))
        gen = torch.Generator().manual_seed(rank)
        with _no_tf32(runtime.amp_dtype is None and device.type == "cuda"):
            order = torch.randint(0, len(x), (3 * sz["batch"],), generator=gen)
            train_epoch(model, optimizer, scaler, runner, x, onehot, order, **common)
            _sync(device)
            order = torch.randint(0, len(x), (sz["conc_batches"] * sz["batch"],), generator=gen)
            barrier.wait(timeout=900)
            start = time.time()
            train_epoch(model, optimizer, scaler, runner, x, onehot, order, **common)
            _sync(device)
            end = time.time()
        queue.put({"rank": rank, "start": start, "end": end, "samples": len(order)})
    except BaseException as exc:  # report, never hang the parent
        queue.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"})
        with contextlib.suppress(Exception):
            barrier.abort()


def section_concurrency(ctx: dict) -> dict:
    args, out = ctx["args"], ctx["out"]
    spawn = mp.get_context("spawn")
    rows = []
    for n in args.concurrent:
        barrier, queue = spawn.Barrier(n), spawn.Queue()
        worker_args = vars(args) | {"params": str(args.params), "configfile": [str(f) for f in args.configfile]}
        procs = [spawn.Process(target=concurrency_worker, args=(r, worker_args, barrier, queue)) for r in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=1200) for _ in range(n)]
        for p in procs:
            p.join(timeout=60)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"concurrency worker failed: {errors[0]}")
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        samples = sum(r["samples"] for r in results)
        per_process = [r["samples"] / (r["end"] - r["start"]) for r in results]
        rows.append({"processes": n, "aggregate_samples_per_s": samples / span,
                     "per_process_samples_per_s": float(np.mean(per_process)),
                     "per_process_epoch_s": PAPER_TRAIN / float(np.mean(per_process))})
        log.info("concurrency %d: %.1f samples/s together, %.1f each", n, rows[-1]["aggregate_samples_per_s"],
                 rows[-1]["per_process_samples_per_s"])
    pd.DataFrame(rows).to_csv(out / "concurrency.csv", index=False)
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ summary
@contextlib.contextmanager
def _no_tf32(active: bool):
    """fp32 as training runs it (no TF32 convolutions) for the duration."""
    prev = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if active:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def _dtype_name(dtype) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def summary_rows(env: dict, floor: dict, results: dict, errors: dict) -> list[tuple[str, str]]:
    rows = [("device", f"{env['device_name']} | torch {env['torch']} | {env['driver']}"),
            ("bandwidth floor", f"{env['copy_tb_per_s']:.2f} TB/s copy => {floor['floor_samples_per_s']:,.0f} samples/s, "
                                f"{floor['floor_epoch_s']:.2f} s/epoch, {floor['floor_run_min']:.1f} min/run")]
    tp = results.get("throughput")
    if tp:
        figures = "; ".join(f"{v['variant']} {v['samples_per_s']:,.0f} ({v['vs_eager_fp32']:.2f}x)"
                            for v in tp["variants"])
        rows.append(("train_epoch samples/s (x eager fp32)", figures))
        rows.append(("configured step vs floor",
                     f"{floor['floor_samples_per_s'] / tp['variants'][0]['samples_per_s']:.1f}x the floor's time per sample"))
        rows.append(("evaluation of 5,265 clips", "; ".join(
            f"batch {e['eval_batch_size']} {e['seconds_per_5265_clips']:.2f} s" for e in tp["eval"])))
        c = tp["compile"]
        what = f"compile ({c['compile_mode']})" if c["compile_mode"] else "first step (eager: nothing compiles here)"
        rows.append((f"{what}, fresh process", f"empty cache {c['cold_first_step_s']:.1f} s, filled cache "
                                              f"{c['warm_first_step_s']:.1f} s (first training step)"))
    r = results.get("run")
    if r:
        rows.append(("run_training epoch (train + eval)",
                     f"{r['steady_epoch_s']:.2f} s steady, first {r['first_epoch_s']:.1f} s, peak {r['peak_gpu_gb']:.1f} GB "
                     f"({r['train_clips']:,}/{r['eval_clips']:,} clips)"))
        rows.append(("paper run (150 epochs)", f"{r['minutes_per_paper_run']:.1f} min; sweep of {r['sweep_runs']} runs "
                                               f"{r['sweep_gpu_hours']:.1f} GPU-h; {r['multiple_of_floor']:.1f}x the floor"))
    f = results.get("features")
    if f:
        rows.append(("features clips/s", f"{f['clips_per_s_on_device']:,.0f} on device; "
                                         f"{f['clips_per_s_with_copies']:,.0f} with host<->device copies"))
    c = results.get("concurrency")
    if c:
        rows.append(("concurrent runs on one device", "; ".join(
            f"{r['processes']}: {r['aggregate_samples_per_s']:,.0f} samples/s together "
            f"({r['per_process_epoch_s']:.1f} s/epoch each)" for r in c["rows"])))
    for name, err in errors.items():
        rows.append((f"{name} FAILED", err.splitlines()[0][:200]))
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU-friendly): checks the script, not the GPU")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--concurrent", default="2", help="comma list of process counts for the concurrency section")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--configfile", type=Path, nargs="*", default=[FAST_OVERRIDE],
                    help="overrides merged on top of --params (default: config/gpu-fast.yaml, the settings whose "
                         "agreement with fp32 tests/test_gpu.py checks; give the flag alone for params.yaml as is)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --quick, else all, <= 16)")
    ap.add_argument("--signal", type=float, default=None, help="synthetic class-texture amplitude (accuracy difficulty)")
    ap.add_argument("--first-step", action="store_true",
                    help="only time the first compiled training step and print it as JSON (the compile row runs this "
                         "in fresh processes)")
    args = ap.parse_args(argv)
    if args.first_step:
        worker_first_step(args)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    args.concurrent = [int(n) for n in args.concurrent.split(",")]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((out / "torchinductor").resolve()))
    # cuBLAS reads this once, at its first use in the process; deterministic runs need it (run_training sets
    # it too, but earlier sections have used cuBLAS by then)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # A training job compiles at most ~6 graphs (batch and remainder shapes); this one process compiles the
    # step for every variant: raise dynamo's per-function limit of 8.
    import torch._dynamo.config

    torch._dynamo.config.recompile_limit = 64
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.FileHandler(out / "gpu_check.log", mode="w"), logging.StreamHandler(sys.stderr)])
    logging.getLogger("torch").setLevel(logging.WARNING)
    sz = sizes(args.quick)
    if args.signal is not None:
        sz["signal"] = args.signal
    params = load_params(args.params, args.configfile)
    device = resolve_device(args.device, "--device")
    # quick: one thread, so a shared CPU box gives stable numbers (OpenMP barriers stall under contention)
    torch.set_num_threads(args.threads or (1 if args.quick else max(1, min(16, len(os.sched_getaffinity(0))))))
    env = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
           "torch": torch.__version__, "cuda": torch.version.cuda, "driver": nvidia_driver(),
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "compile_devices": list(COMPILE_DEVICES), "inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"],
           "quick": args.quick, "sizes": {k: v for k, v in sz.items()}, "argv": sys.argv}
    if device.type != "cuda" and torch.cuda.device_count() == 0:
        env["cuda_diagnosis"] = cuda_diagnosis()
    env["copy_tb_per_s"] = copy_bandwidth(device, sz["copy_mb"]) / 1e12
    floor = floor_rates(model_config(params), (256, 862), env["copy_tb_per_s"] * 1e12)  # the paper's clip shape
    env["floor"] = floor
    (out / "env.json").write_text(json.dumps(env, indent=1, default=str))
    log.info("device %s (%s), torch %s, %s; inductor cache %s", device, env["device_name"], env["torch"], env["driver"],
             env["inductor_cache"])

    shape = (sz["n_mels"], sz["n_frames"])
    memo: dict = {}

    def caches(kind: str, n_train: int, n_eval: int):
        def make():
            if kind not in memo:
                folder = out / "caches" / kind
                t0 = time.perf_counter()
                memo[kind] = (write_synthetic_cache(folder, "train", n_train, shape, signal=sz["signal"], seed=1, device=device),
                              write_synthetic_cache(folder, "evaluate", n_eval, shape, signal=sz["signal"], seed=2,
                                                    device=device))
                log.info("synthetic %s caches (%d + %d clips of %s) in %.1f s", kind, n_train, n_eval, shape,
                         time.perf_counter() - t0)
            return memo[kind]
        return make

    ctx = {"args": args, "sizes": sz, "device": device, "params": params, "out": out, "floor": floor,
           "full_caches": caches("full", sz["train"], sz["eval"])}
    funcs = {"throughput": section_throughput, "run": section_run, "features": section_features,
             "concurrency": section_concurrency}
    results, errors, timings = {}, {}, {}
    for name in sections:
        t0 = time.perf_counter()
        log.info("== %s", name)
        try:
            results[name] = funcs[name](ctx)
        except Exception as exc:  # one failing section must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("section %s failed:\n%s", name, traceback.format_exc())
        timings[name] = time.perf_counter() - t0
        log.info("== %s took %.1f s", name, timings[name])
    rows = summary_rows(env, floor, results, errors)
    pd.DataFrame(rows, columns=["what", "figure"]).to_csv(out / "summary.csv", index=False)
    md = ["| what | figure |", "|---|---|"] + [f"| {w} | {f} |" for w, f in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps({"env": env, "results": results, "errors": errors,
                                                  "section_seconds": timings}, indent=1, default=str))
    width = max(len(w) for w, _ in rows)
    note = "quick: tiny shapes, so the figures check the script, not the machine; " if args.quick else ""
    print(f"\nGPU check on {device} ({note}full logs and CSVs in {out}/)")
    for what, figure in rows:
        print(f"  {what:<{width}}  {figure}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
