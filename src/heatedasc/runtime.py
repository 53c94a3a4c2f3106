"""Where torch work runs and how: one resolver for every config key that names a device (auto | cpu | cuda), and
a training run's device policy: precision (AMP), memory format, torch.compile and torch's process-wide settings."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Variables that say GPUs were handed to this process: a SLURM gres allocation, or CUDA_VISIBLE_DEVICES.
# A Snakemake `gpu` resource alone sets none of them (locally it only counts slots), so it is no allocation.
GPU_ALLOCATION_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
_NO_DEVICES = ("", "-1", "none", "nodevfiles")  # values that name no GPU (SLURM writes NoDevFiles)


def resolve_device(name: str, key: str) -> torch.device:
    """``auto`` is CUDA when the process sees a GPU (in a SLURM job: the one it was given), else CPU.

    A wrong name, or ``cuda`` without a GPU, is a ValueError naming the config ``key``. So is ``auto`` in a
    process that was given a GPU (gpu_allocation) that torch cannot use — e.g. a driver older than the
    wheel's CUDA: training on the CPU instead would take days, so it stops at once, naming both versions.
    An explicit ``cpu`` never looks at GPUs.
    """
    if name not in DEVICE_CHOICES:
        raise ValueError(f"{key} must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise ValueError(f"{key} is 'cuda' but no CUDA device is available ({cuda_diagnosis()})")
    allocation = gpu_allocation()
    if allocation is not None:
        raise ValueError(
            f"{key} is 'auto' and this job was given a GPU ({allocation}), but {cuda_diagnosis()}. "
            f"Stopping instead of running on the CPU: install a torch build for this driver (docs/gpu.md) "
            f"or set {key}: cpu"
        )
    return torch.device("cpu")


def gpu_allocation(environ: Mapping[str, str] | None = None) -> str | None:
    """``NAME=value`` of the first variable in GPU_ALLOCATION_VARS that names a GPU, or None."""
    environ = os.environ if environ is None else environ
    for var in GPU_ALLOCATION_VARS:
        value = environ.get(var, "").strip()
        if value.lower() in _NO_DEVICES:
            continue
        if var == "SLURM_GPUS_ON_NODE":
            names = value.isdigit() and int(value) > 0
        elif var == "CUDA_VISIBLE_DEVICES":
            # CUDA reads the list up to its first invalid entry: an index or a GPU-/MIG- UUID names a device
            first = value.split(",")[0].strip()
            names = first.isdigit() or first.upper().startswith(("GPU-", "MIG-"))
        else:
            names = True
        if names:
            return f"{var}={value}"
    return None


def cuda_diagnosis() -> str:
    """'torch 2.11.0+cu130 (built for CUDA 13.0) sees no CUDA device; NVIDIA driver 535.104.05'."""
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__} ({built}) sees no CUDA device; {nvidia_driver()}"


def nvidia_driver() -> str:
    """'NVIDIA driver <version>' from /proc/driver/nvidia/version or nvidia-smi, else 'no NVIDIA driver found'."""
    try:
        text = DRIVER_VERSION_FILE.read_text(errors="replace")
    except OSError:
        text = ""
    # "NVRM version: NVIDIA UNIX [Open Kernel Module for ]x86_64  535.104.05  Release Build ..."
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    if match:
        return f"NVIDIA driver {match[1]}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        match = re.match(r"\s*(\d+(?:\.\d+)+)", out)
        if match:
            return f"NVIDIA driver {match[1]} (nvidia-smi)"
        return "no NVIDIA driver found (nvidia-smi is installed but reports no driver version)"
    return "no NVIDIA driver found"


# ------------------------------------------------------------------ how a training run computes on its device

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the schema's train.amp_dtype names -> autocast dtypes
# torch.compile is used on these device types only. Not on CPU: CPU results must stay bit-identical to the
# eager loop's (inductor reorders float sums), and for the demo's tiny inputs inductor's C++ compile
# (10-30 s a graph on a small box) outweighs the gain.
COMPILE_DEVICES = ("cuda",)
COMPILE_CACHE_DIR = Path(".cache") / "torchinductor"  # under the working directory, unless TORCHINDUCTOR_CACHE_DIR is set


@dataclass(frozen=True)
class Runtime:
    """How a run computes on its device: resolved once from the train config and the device."""

    amp_dtype: torch.dtype | None   # autocast dtype; None: float32 throughout
    channels_last: bool
    compile_mode: str | None        # torch.compile mode; None: eager

    def describe(self) -> dict:
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        return {"precision": precision, "channels_last": self.channels_last,
                "torch.compile": self.compile_mode or "off"}


def resolve_runtime(cfg: Mapping, device: torch.device) -> Runtime:
    """AMP, channels_last and torch.compile apply on CUDA only (COMPILE_DEVICES); elsewhere the run is eager fp32.
    `cfg`: the train section with execution.train merged in (amp, amp_dtype, channels_last, compile, compile_mode)."""
    amp_dtype = None
    if cfg["amp"] and device.type == "cuda":
        amp_dtype = AMP_DTYPES[cfg["amp_dtype"]]
        if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(
                f"train.amp_dtype is 'bf16' but {torch.cuda.get_device_name(device)} has no native bfloat16; "
                "set train.amp_dtype: fp16 (or train.amp: false)"
            )
    compile_mode = cfg["compile_mode"] if cfg["compile"] and device.type in COMPILE_DEVICES else None
    return Runtime(amp_dtype, bool(cfg["channels_last"]) and device.type == "cuda", compile_mode)


@contextlib.contextmanager
def compiler_settings(runtime: Runtime, *, deterministic: bool):
    """For a compiled run: the shared compile cache, a recompile-limit hit as an error instead of a silent
    eager fallback, and (deterministic) no timing-based kernel choices that change numerics."""
    if runtime.compile_mode is None:
        yield
        return
    import torch._dynamo.config
    import torch._inductor.config

    cache_set = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    if cache_set:  # every job of a sweep runs in the workflow's directory: they share one cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(COMPILE_CACHE_DIR.resolve())
    log.info("torch.compile cache: %s", os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True), \
                torch._inductor.config.patch(deterministic=deterministic):
            yield
    finally:
        if cache_set:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]


@contextlib.contextmanager
def torch_settings(runtime: Runtime, device: torch.device, *, deterministic: bool, threads: int):
    """torch's process-wide settings for one training run, restored afterwards: `threads` CPU threads,
    deterministic algorithms (or cuDNN autotuning on CUDA), no TF32 in an fp32 CUDA run (the paper trained in
    fp32; torch allows TF32 convolutions by default), and compiler_settings for a compiled run."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prev_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if device.type == "cuda" and runtime.amp_dtype is None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with compiler_settings(runtime, deterministic=deterministic):
            yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def compile_fn(fn: Callable, mode: str) -> Callable:
    """torch.compile as training uses it: one whole graph (a graph break is an error, never a silent eager
    fallback) and static shapes (the last, smaller batch of an epoch gets its own graph)."""
    return torch.compile(fn, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)


def is_compile_error(exc: BaseException) -> bool:
    """True for torch.compile's own failures (dynamo, inductor, a backend), not for errors of the computation."""
    if not isinstance(exc, RuntimeError):
        return False
    from torch._dynamo.exc import TorchDynamoException  # lazy: only a compiled run needs dynamo

    return isinstance(exc, TorchDynamoException)
