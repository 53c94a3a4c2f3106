"""Provenance records: what went into an output (content hashes, config, code, packages, host, job).

Each job writes two records. The *stable* one sits beside its outputs (DVC-tracked): content hashes of
inputs and outputs, params, config, code and package versions — identical when an identical job reruns, so
`dvc.lock` does not change. The *volatile* one (when, on which host and GPU, which SLURM job, which git
commit) goes to `logs/provenance/<record path>`, outside every tracked output; `heatedasc lineage` reads both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

from heatedasc.fileio import sha256_file

PACKAGES = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "snakemake", "dvc", "heatedasc")


def cached_sha256_file(path: str | os.PathLike, *, use_cache: bool = True) -> str:
    """fileio.sha256_file, memoised on disk by (path, size, mtime, inode): many jobs hash the same
    multi-GB inputs (audio folders, feature caches), and a changed file changes its key."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    cache = _hash_cache() if use_cache else None
    if cache is not None:
        try:
            row = cache.execute(
                "SELECT digest FROM hashes WHERE path=? AND size=? AND mtime_ns=? AND inode=?", key
            ).fetchone()
        except sqlite3.Error:  # locked (concurrent jobs, NFS) or damaged: hashing is always correct
            row = None
        if row:
            return row[0]
    digest = sha256_file(path)
    if cache is not None:
        with contextlib.suppress(sqlite3.Error):
            cache.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (*key, digest))
            cache.commit()
    return digest


_CACHE: list = []


VOLATILE_DIR = Path("logs") / "provenance"
HASH_CACHE = Path(".snakemake") / "heatedasc" / "hashes.sqlite"  # in the working directory: a folder the project owns


def _hash_cache():
    """The on-disk hash memo ($HEATEDASC_HASH_CACHE, default .snakemake/heatedasc/hashes.sqlite); None if unusable."""
    if _CACHE:
        return _CACHE[0]
    location = os.environ.get("HEATEDASC_HASH_CACHE", str(HASH_CACHE))
    conn = None
    if location.lower() not in ("", "off", "none", "0"):
        try:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(location, timeout=60)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT, size INTEGER, mtime_ns INTEGER, inode INTEGER,"
                " digest TEXT, PRIMARY KEY (path, size, mtime_ns, inode))"
            )
            conn.commit()
        except (OSError, sqlite3.Error):
            conn = None
    _CACHE.append(conn)
    return conn


def sha256_tree(path: str | os.PathLike) -> str:
    """One hash for a folder: sha256 over the sorted (relative path, file hash) pairs."""
    root = Path(path)
    h = hashlib.sha256()
    # Snakemake drops a `.snakemake_timestamp` into directory outputs after the job: not content.
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"):
        h.update(f"{f.relative_to(root).as_posix()}\0{cached_sha256_file(f)}\n".encode())
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    return sha256_tree(path) if Path(path).is_dir() else cached_sha256_file(path)


def code_version() -> dict:
    """A hash of the library's source (stable: the same code gives the same value on every machine)."""
    return {"package_sha256": _source_hash(Path(__file__).resolve().parent)}


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
) -> tuple[dict, dict]:
    """(stable, volatile) provenance records. Inputs are hashed by content (folders as trees); outputs too."""

    def hashes(items):
        out = {}
        for key, value in items.items():
            paths = value if isinstance(value, (list, tuple)) else [value]
            out[key] = {str(p): sha256_path(p) for p in paths if Path(p).exists()}
        return out

    stable = {
        "stage": stage,
        "wildcards": dict(wildcards or {}),
        "params": dict(params or {}),
        "inputs": hashes(inputs),
        "outputs": hashes(outputs or {}),
        "config": dict(config or {}),
        "code": code_version(),
        "packages": package_versions(),
    }
    volatile = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_version(),
        "host": host_info(),
        "slurm": slurm_info(),
    }
    return stable, volatile


def volatile_path(record_path: str | os.PathLike) -> Path:
    """Where the volatile half of the record at `record_path` (relative to the working directory) lives."""
    rel = Path(os.path.relpath(Path(record_path).resolve(), Path.cwd().resolve()))
    if rel.parts and rel.parts[0] == "..":  # a record outside the working directory: key it by its full path
        rel = Path("external", *Path(record_path).resolve().parts[1:])
    return VOLATILE_DIR / rel


def load_volatile(record_path: str | os.PathLike, base: str | os.PathLike = ".") -> dict:
    """The volatile half of a record, or {} where it is not on this machine (e.g. a clone that pulled results)."""
    import json

    rel = os.path.relpath(Path(record_path).resolve(), Path(base).resolve())
    path = Path(base) / VOLATILE_DIR / rel
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def record_job(smk, stage: str, provenance_key: str = "provenance") -> dict:
    """Write the provenance records of a Snakemake job (stable to its `provenance` output, volatile to
    logs/provenance/) and return the stable one.

    Inputs (including the library modules listed as `code`) and all other outputs are hashed by
    content, so `heatedasc lineage` can later tell which links still match what is on disk.
    """
    from heatedasc.fileio import write_json

    outputs = {k: v for k, v in smk.output.items() if k != provenance_key}
    if not outputs and len(smk.output) > 1:
        outputs = {"output": [p for p in smk.output if p != smk.output.get(provenance_key)]}
    inputs = {k: v for k, v in smk.input.items() if k != "recipe"}  # the rerun token is bookkeeping
    stable, volatile = collect(
        stage=stage,
        inputs=inputs or {"input": [p for p in smk.input if p not in smk.input.get("recipe", [])]},
        outputs=outputs,
        params={k: v for k, v in smk.params.items() if k != "recipe"},
        wildcards=dict(smk.wildcards.items()),
        config=dict(smk.config),
    )
    from heatedasc.pinning import record as cpu_record

    stable["cpu"], volatile["cpu"] = cpu_record()  # pinned kernels and threads (heatedasc.pinning.apply)
    recipe = smk.params.get("recipe")
    if recipe:  # what Snakemake compares at the next planning (heatedasc.recipes)
        stable = {"fingerprint": recipe["fingerprint"], **stable, "recipe": recipe}
    record_path = smk.output[provenance_key]
    write_json(volatile_path(record_path), volatile)
    write_json(record_path, stable)
    return stable
