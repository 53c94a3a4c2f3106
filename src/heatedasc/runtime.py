"""Where torch work runs: one resolver for every config key that names a device (auto | cpu | cuda)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

import torch

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
