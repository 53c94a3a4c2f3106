"""Provenance records: what a job read and wrote, by content, written by the job itself when it succeeds.

Each job writes two records. The *stable* one is its `provenance` output, beside its results (DVC-tracked): the
rule and wildcards, the params it ran with (all but the speed-only `execution` block), its code (the adapter
script and the library import closure, by content), the CPU kernels it was pinned to, and every input and
output by content. It is what the workflow compares at planning (heatedasc.currency): identical when an identical
job reruns, so `dvc.lock` does not change, and free of absolute paths, so a clone elsewhere, or the dataset
mounted elsewhere, reads the same. The *volatile* one — when, on which host and GPU, in which SLURM job, at which
git commit, with which speed-only settings — goes to `logs/provenance/<record path>`, outside every tracked output;
`heatedasc lineage` reads both.

Paths in records are *portable*: relative to the working directory when inside it; `{data.root}/...` for raw
data elsewhere (the configured data root); absolute only for anything else.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

from heatedasc.codedeps import code_digests
from heatedasc.hashing import digest_many

PACKAGES = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "snakemake", "dvc", "heatedasc")
VOLATILE_DIR = Path("logs") / "provenance"
DATA_ROOT_TOKEN = "{data.root}"
RECORD_OUTPUT = "provenance"  # the output every recording rule names its stable record
SPEED_ONLY = "execution"  # the params entry holding speed-only settings: never part of a record
RECORD_VERSION = 2


# ----------------------------------------------------------------------------------------- paths


def portable(path: str | os.PathLike, data_root: str | os.PathLike | None) -> str:
    """`path` as records name it: relative to the working directory, or to the data root, or absolute."""
    p = Path(os.path.abspath(path))
    cwd = Path.cwd().resolve()
    if data_root is not None and not Path(os.path.abspath(data_root)).is_relative_to(cwd):
        root = Path(os.path.abspath(data_root))
        if p.is_relative_to(root):
            return f"{DATA_ROOT_TOKEN}/{p.relative_to(root).as_posix()}".rstrip("/")
    if p.is_relative_to(cwd):
        return p.relative_to(cwd).as_posix()
    return p.as_posix()


def local(name: str, data_root: str | os.PathLike | None) -> str:
    """The path on this machine of a portable name (the inverse of `portable`)."""
    if name == DATA_ROOT_TOKEN or name.startswith(DATA_ROOT_TOKEN + "/"):
        if data_root is None:
            raise ValueError(f"{name}: names the data root, but no data.root is configured")
        return os.path.join(str(data_root), name[len(DATA_ROOT_TOKEN) + 1:])
    return name


def hash_named(items: Mapping[str, Iterable[str]], data_root) -> dict[str, dict[str, str]]:
    """{name: {portable path: digest}} for named groups of paths (missing paths are 'missing')."""
    flat = [str(p) for paths in items.values() for p in paths]
    digests = digest_many(flat)
    return {name: {portable(p, data_root): digests[str(p)] for p in paths} for name, paths in items.items()}


# --------------------------------------------------------------------------------------- records


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def recorded_params(params: Mapping) -> dict:
    """The params a record holds: every rule param except the speed-only block, in canonical JSON form."""
    return json.loads(json.dumps({k: v for k, v in params.items() if k != SPEED_ONLY}, sort_keys=True,
                                 default=_json_default))


def stable_record(*, rule: str, wildcards: Mapping, params: Mapping, script: str | os.PathLike | None,
                  inputs: Mapping[str, Iterable[str]], outputs: Mapping[str, Iterable[str]], cpu: Mapping | None,
                  data_root) -> dict:
    """The stable record of a job that read `inputs` and wrote `outputs` (named groups of paths)."""
    return {
        "record_version": RECORD_VERSION,
        "rule": rule,
        "wildcards": {k: str(v) for k, v in wildcards.items()},
        "params": recorded_params(params),
        "code": code_digests(str(script)) if script else {},
        "cpu": dict(cpu or {}),
        "inputs": hash_named(inputs, data_root),
        "outputs": hash_named(outputs, data_root),
        "packages": package_versions(),
    }


def git_version(repo_dir: str | os.PathLike | None = None) -> dict:
    """The git commit and dirty flag of the checkout (volatile: a new commit changes it, not the code)."""
    repo = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    info: dict = {}
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


def host_info() -> dict:
    info: dict[str, object] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only where the job loaded it: importing torch to say so costs 1.5 s a job
    if torch is not None:
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return info


def slurm_info() -> dict | None:
    keys = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS")
    found = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return found or None


def volatile_record(execution: Mapping | None = None, extra: Mapping | None = None) -> dict:
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_version(),
        "host": host_info(),
        "slurm": slurm_info(),
        "execution": dict(execution or {}),
        **dict(extra or {}),
    }


def volatile_path(record_path: str | os.PathLike) -> Path:
    """Where the volatile half of the record at `record_path` (relative to the working directory) lives."""
    rel = Path(os.path.relpath(Path(record_path).resolve(), Path.cwd().resolve()))
    if rel.parts and rel.parts[0] == "..":  # a record outside the working directory: key it by its full path
        rel = Path("external", *Path(record_path).resolve().parts[1:])
    return VOLATILE_DIR / rel


def load_volatile(record_path: str | os.PathLike, base: str | os.PathLike = ".") -> dict:
    """The volatile half of a record, or {} where it is not on this machine (e.g. a clone that pulled results)."""
    rel = os.path.relpath(Path(record_path).resolve(), Path(base).resolve())
    path = Path(base) / VOLATILE_DIR / rel
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_record(path: str | os.PathLike) -> dict | None:
    """A stable record, or None when it is absent, unreadable or of an older format."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION:
        return None
    return record


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"not JSON serialisable in a record: {type(o).__name__}")

