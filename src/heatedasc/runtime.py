"""Where torch work runs: one resolver for every config key that names a device (auto | cpu | cuda)."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, key: str) -> torch.device:
    """``auto`` is CUDA when the process sees a GPU (in a SLURM job: the one it was given), else CPU.

    A wrong name, or ``cuda`` without a GPU, is a ValueError naming the config ``key``.
    """
    if name not in DEVICE_CHOICES:
        raise ValueError(f"{key} must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key} is 'cuda' but no CUDA device is available")
    return torch.device(name)
