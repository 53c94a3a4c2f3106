"""Training throughput at paper size: the project's loop (heatedasc.train.train_epoch) vs a plain reference.

Reference = float32 tensors in host memory, torch DataLoader(shuffle=True), no AMP, no channels_last,
mixup on the host batch. Both use the same model, loss (focal, T=10), L2 penalty and Adadelta, and run
in this process on the same device. Prints samples/s, extrapolated s/epoch (10,265 clips) and the ratio.

    python benchmarks/bench_train.py --batches 3            # CPU: a few batches only
    python benchmarks/bench_train.py --batches 50 --device cuda                  # compiled, bf16 (config/gpu-fast.yaml)
    python benchmarks/bench_train.py --batches 50 --device cuda --no-compile --amp-dtype fp16

--compile works on CPU too (inductor's C++ backend), though training only compiles on CUDA.
benchmarks/gpu_check.py measures everything the paper configuration depends on in one go.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from heatedasc.losses import make_loss
from heatedasc.model import ASCNet
from heatedasc.runtime import AMP_DTYPES
from heatedasc.train import COMPILE_MODES, BatchRunner, draw_mixup, l2_penalty, mixup_batch, train_epoch

PAPER_EPOCH_CLIPS = 10_265  # fold1_train clips in TAU 2019 Mobile (docs/reproduction.md §1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_project(features16: np.ndarray, labels: np.ndarray, args, device: torch.device) -> float:
    """Samples/s of the project's loop (device-resident float16 cache, AMP/channels_last on CUDA, torch.compile)."""
    torch.manual_seed(0)
    amp_dtype = AMP_DTYPES[args.amp_dtype] if device.type == "cuda" and args.amp else None
    channels_last = device.type == "cuda" and args.channels_last
    model = ASCNet().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adadelta(model.parameters(), lr=0.5, rho=0.95, eps=1e-7)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    runner = BatchRunner(model, device, amp_dtype, channels_last, args.compile_mode if args.compile else None)
    x = runner.to_device_features(features16)
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 10).float().to(device)
    loss_fn = make_loss("focal", temperature=10.0, gamma=1.0)
    rng = np.random.default_rng(0)
    common = dict(batch_size=args.batch_size, mixup_alpha=0.2, np_rng=rng, loss_fn=loss_fn, weight_decay_l2=1e-5)
    warm = torch.arange(args.batch_size)
    t0 = time.perf_counter()
    train_epoch(model, opt, scaler, runner, x, onehot, warm, **common)  # warm-up batch (cuDNN, allocator, compile)
    _sync(device)
    print(f"  project warm-up batch: {time.perf_counter() - t0:.1f} s", flush=True)
    order = torch.randperm(len(labels))[: args.batches * args.batch_size]
    t0 = time.perf_counter()
    train_epoch(model, opt, scaler, runner, x, onehot, order, **common)
    _sync(device)
    return len(order) / (time.perf_counter() - t0)


def bench_reference(features16: np.ndarray, labels: np.ndarray, args, device: torch.device) -> float:
    """Samples/s of a plain loop: float32 host tensors, DataLoader, no AMP."""
    torch.manual_seed(0)
    model = ASCNet().to(device)
    opt = torch.optim.Adadelta(model.parameters(), lr=0.5, rho=0.95, eps=1e-7)
    loss_fn = make_loss("focal", temperature=10.0, gamma=1.0)
    data = torch.utils.data.TensorDataset(torch.from_numpy(features16.astype(np.float32)), torch.tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=0)
    rng = np.random.default_rng(0)

    def step(xb, yb):
        xb = xb.unsqueeze(1).to(device)
        y = torch.nn.functional.one_hot(yb, 10).float().to(device)
        lam, partner = draw_mixup(rng, len(yb), 0.2)
        xb, y = mixup_batch(xb, y, torch.from_numpy(lam).to(device), torch.from_numpy(partner).to(device))
        loss = loss_fn(model(xb), y) + l2_penalty(model, 1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    it = iter(loader)
    step(*next(it))  # warm-up
    _sync(device)
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        xb, yb = next(it)
        step(xb, yb)
        n += len(yb)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=3, help="timed batches per loop (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-mels", type=int, default=256)
    ap.add_argument("--n-frames", type=int, default=862)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the best rate of each is kept")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--amp-dtype", default="bf16", choices=tuple(AMP_DTYPES))
    ap.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                    help="torch.compile the project's step (default: on CUDA only, as training does)")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.compile is None:
        args.compile = device.type == "cuda"
    n_clips = (args.batches + 1) * args.batch_size
    rng = np.random.default_rng(0)
    features16 = rng.standard_normal((n_clips, args.n_mels, args.n_frames), dtype=np.float32).astype(np.float16)
    labels = rng.integers(0, 10, n_clips)
    print(f"device={device} threads={args.threads} input={args.n_mels}x{args.n_frames} "
          f"batch={args.batch_size} timed_batches={args.batches} compile={args.compile} amp_dtype={args.amp_dtype}")
    results: dict[str, float] = {}
    loops = (("project", bench_project), ("reference", bench_reference))
    for r in range(args.repeats):
        for name, fn in loops if r % 2 == 0 else loops[::-1]:  # alternate order: no first-run advantage
            sps = fn(features16, labels, args, device)
            print(f"  run {r + 1} {name}: {sps:.2f} samples/s", flush=True)
            results[name] = max(results.get(name, 0.0), sps)
    for name, sps in results.items():
        print(f"{name:9s}: {sps:8.2f} samples/s   {PAPER_EPOCH_CLIPS / sps:10.1f} s/epoch (10,265 clips)")
    print(f"ratio project/reference: {results['project'] / results['reference']:.2f}x")


if __name__ == "__main__":
    main()
