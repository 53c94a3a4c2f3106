"""Device resolution: a job given a GPU that torch cannot use stops at once, naming torch's CUDA and the driver."""

import re
import stat

import pytest
import torch

import heatedasc.runtime as rt
from heatedasc.runtime import GPU_ALLOCATION_VARS, gpu_allocation, resolve_device

DRIVER_LINE = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
               "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


@pytest.fixture
def no_cuda(monkeypatch, tmp_path):
    """A machine whose torch sees no CUDA device, with no GPU variables set and no driver, unless a test adds them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    for var in GPU_ALLOCATION_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(rt, "DRIVER_VERSION_FILE", tmp_path / "no-such-driver")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no nvidia-smi
    return tmp_path


def test_auto_without_a_gpu_allocation_is_the_cpu(no_cuda):
    assert resolve_device("auto", "train.device") == torch.device("cpu")


@pytest.mark.parametrize("var, value", [("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_JOB_GPUS", "0"),
                                        ("SLURM_STEP_GPUS", "1,3"), ("SLURM_GPUS_ON_NODE", "1")])
def test_auto_in_a_job_given_a_gpu_torch_cannot_use_stops_naming_both_versions(no_cuda, monkeypatch, var, value):
    (no_cuda / "driver").write_text(DRIVER_LINE)
    monkeypatch.setattr(rt, "DRIVER_VERSION_FILE", no_cuda / "driver")
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as info:
        resolve_device("auto", "train.device")
    assert str(info.value) == (
        f"train.device is 'auto' and this job was given a GPU ({var}={value}), but torch 2.11.0+cu130 "
        "(built for CUDA 13.0) sees no CUDA device; NVIDIA driver 535.104.05. Stopping instead of running on "
        "the CPU: install a torch build for this driver (docs/gpu.md) or set train.device: cpu"
    )


def test_no_driver_at_all_is_said_so(no_cuda, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    with pytest.raises(ValueError, match=re.escape(
            "but torch 2.11.0+cu130 (built for CUDA 13.0) sees no CUDA device; no NVIDIA driver found. Stopping")):
        resolve_device("auto", "features.device")


def test_driver_version_from_nvidia_smi_when_proc_has_none(no_cuda, monkeypatch):
    bin_dir = no_cuda / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-4f1c2b3a")
    with pytest.raises(ValueError, match=re.escape(
            "given a GPU (CUDA_VISIBLE_DEVICES=GPU-4f1c2b3a), but torch 2.11.0+cu130 (built for CUDA 13.0) sees "
            "no CUDA device; NVIDIA driver 550.54.15 (nvidia-smi). Stopping")):
        resolve_device("auto", "train.device")
    assert rt.nvidia_driver() == "NVIDIA driver 550.54.15 (nvidia-smi)"


def test_open_kernel_module_line_is_read(no_cuda, monkeypatch):
    (no_cuda / "driver").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n")
    monkeypatch.setattr(rt, "DRIVER_VERSION_FILE", no_cuda / "driver")
    assert rt.nvidia_driver() == "NVIDIA driver 580.65.06"


def test_explicit_cpu_never_errors_even_in_a_gpu_job(no_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    assert resolve_device("cpu", "train.device") == torch.device("cpu")


def test_explicit_cuda_without_cuda_names_the_versions(no_cuda):
    with pytest.raises(ValueError, match=re.escape(
            "train.device is 'cuda' but no CUDA device is available (torch 2.11.0+cu130 (built for CUDA 13.0) "
            "sees no CUDA device; no NVIDIA driver found)")):
        resolve_device("cuda", "train.device")
    with pytest.raises(ValueError, match=re.escape("train.device must be one of auto, cpu, cuda, got 'gpu'")):
        resolve_device("gpu", "train.device")


def test_cpu_only_torch_build_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cpu")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")
    with pytest.raises(ValueError, match=re.escape("but torch 2.11.0+cpu (a CPU-only build) sees no CUDA device")):
        resolve_device("auto", "train.device")


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
    ({"CUDA_VISIBLE_DEVICES": "MIG-7d2a"}, "CUDA_VISIBLE_DEVICES=MIG-7d2a"),
    ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
    ({"SLURM_JOB_GPUS": ""}, None),
    ({"SLURM_JOB_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0"}, "SLURM_JOB_GPUS=2"),  # SLURM's own record first
    ({"SNAKEMAKE_GPU": "1", "SLURM_JOB_ID": "42"}, None),  # a job, and a resource request, but no GPU
])
def test_gpu_allocation_reads_slurm_and_cuda_variables(env, expected):
    assert gpu_allocation(env) == expected
