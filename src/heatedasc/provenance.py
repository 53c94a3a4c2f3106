"""Provenance records: what went into an output (content hashes, config, code, packages, host, job)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

PACKAGES = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "snakemake", "dvc", "heatedasc")
_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """One hash for a folder: sha256 over the sorted (relative path, file hash) pairs."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def code_version(repo_dir: str | os.PathLike | None = None) -> dict:
    """The git commit and dirty flag of the checkout, plus a hash of the installed library source."""
    pkg_dir = Path(__file__).resolve().parent
    repo = Path(repo_dir) if repo_dir else pkg_dir.parents[1]
    info: dict = {"package_sha256": _source_hash(pkg_dir)}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "src", "workflow"],
                capture_output=True, text=True, timeout=10,
            )
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _source_hash(pkg_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(pkg_dir.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def package_versions(names: Iterable[str] = PACKAGES) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict:
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return info


def slurm_info() -> dict | None:
    keys = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS")
    found = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return found or None


def collect(
    *,
    stage: str,
    inputs: Mapping[str, str | os.PathLike | list],
    outputs: Mapping[str, str | os.PathLike] | None = None,
    params: Mapping | None = None,
    wildcards: Mapping | None = None,
    config: Mapping | None = None,
) -> dict:
    """A provenance record. Inputs are hashed by content (folders as trees); outputs likewise if given."""

    def hashes(items):
        out = {}
        for key, value in items.items():
            paths = value if isinstance(value, (list, tuple)) else [value]
            out[key] = {str(p): sha256_path(p) for p in paths if Path(p).exists()}
        return out

    return {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wildcards": dict(wildcards or {}),
        "params": dict(params or {}),
        "inputs": hashes(inputs),
        "outputs": hashes(outputs or {}),
        "config": dict(config or {}),
        "code": code_version(),
        "packages": package_versions(),
        "host": host_info(),
        "slurm": slurm_info(),
    }
