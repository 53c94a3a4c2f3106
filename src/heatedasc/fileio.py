"""File output: every file is written under a temporary name and renamed onto its target only when complete.

Temporary files live in a scratch folder the workflow owns, `.snakemake/heatedasc/scratch/` of the working
directory, never inside an output folder that DVC tracks (a run killed with `kill -9` leaves nothing half-written
where a later run or DVC looks); their names start with the writer's process id, so `clean_scratch` can remove what
dead writers left. Where the scratch folder is on another file system than the target (a rename could not be
atomic), the temporary file goes beside the target instead, under a hidden name, and is removed on every error.

A full disk (or quota) while writing is a `DiskFullError` naming the file, the bytes free and, where known, the
bytes needed — one line, not a library's traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

SCRATCH = Path(".snakemake") / "heatedasc" / "scratch"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left (or the quota reached) while writing a file: names the file and the bytes."""

    def __init__(self, target: str | os.PathLike, needed: int | None = None):
        target = Path(target)
        free = free_bytes(target)
        want = f", {needed:,} needed" if needed is not None else ""
        super().__init__(errno.ENOSPC, f"no space left on the device or quota writing {target} "
                                       f"({free:,} bytes free there{want})")
        self.target, self.needed, self.free = target, needed, free

    def __str__(self) -> str:
        return str(self.strerror)


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the file system of `path` (or of its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(target: str | os.PathLike, needed: int) -> None:
    """Raise DiskFullError before writing `needed` bytes at `target` where they cannot fit."""
    if free_bytes(Path(target).parent) < needed:
        raise DiskFullError(target, needed)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def chmod_default(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp product (0600/0700) the mode a plain open()/mkdir() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def scratch_dir(target: Path) -> Path:
    """Where temporary files for `target` go: the scratch folder of the workflow directory we run in (one that has
    Snakemake's `.snakemake/`) when it lies on the target's file system, so an atomic rename is possible; else the
    target's own folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = SCRATCH.resolve()
    if not scratch.parent.parent.is_dir():  # not in a workflow directory: write nothing of ours here
        return target.parent
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        if os.stat(scratch).st_dev == os.stat(target.parent).st_dev:
            return scratch
    except OSError:
        pass
    return target.parent


def resumable_dir(target: str | os.PathLike, kind: str) -> Path:
    """Where partial results towards `target` are kept between runs (feature shards, training checkpoints): in the
    scratch folder, named after the target's path (kept until the target is complete, whatever happened to the
    process that wrote them), or beside the target under a hidden name outside a workflow directory."""
    target = Path(target)
    folder = scratch_dir(target)
    if folder == target.parent:
        return target.with_name(f".{target.name}.{kind}")
    return folder / f"{kind}-{os.path.relpath(target.resolve(), Path.cwd().resolve()).replace(os.sep, '~')}"


def _temp_name(target: Path) -> str:
    return f"{os.getpid()}.{target.name}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``target``; rename it onto ``target`` only if the block succeeds.

    The temporary name keeps the target's suffix (so writers that dispatch on it, like numpy or soundfile,
    behave) and is removed if the block raises. ``size``, when known, is checked against the free space first
    and named if the disk fills.
    """
    target = Path(target)
    if size is not None:
        check_space(target, size)
    folder = scratch_dir(target)
    prefix = _temp_name(target) if folder != target.parent else f".{target.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix if suffix is not None else target.suffix, dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # a writer may have replaced it; outputs are shared, not private
            chmod_default(tmp_path)
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(target, size) from exc
        raise


def clean_scratch(root: str | os.PathLike = ".") -> list[str]:
    """Remove what writers that are no longer running left in the scratch folder; return the names removed."""
    folder = Path(root) / SCRATCH
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        pid = entry.name.split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk_size`` bytes at a time (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(target: str | os.PathLike, text: str) -> None:
    data = text.encode()
    with atomic_path(target, size=len(data)) as tmp:
        tmp.write_bytes(data)


def save_torch(obj, target: str | os.PathLike) -> None:
    """torch.save, atomically and reproducibly: saved to a file, torch names the archive's records after
    the (random) temporary name; through a buffer it names them 'archive', so equal tensors give equal bytes."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    with atomic_path(target, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(target, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` onto ``target``, replacing an existing folder."""
    old = None
    if target.exists():
        folder = scratch_dir(target)
        prefix = _temp_name(target) if folder != target.parent else f".{target.name}.old-"
        old = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(target: str | os.PathLike) -> Path:
    """A new, empty folder in which to build ``target`` (in the scratch folder where it can be renamed from)."""
    target = Path(target)
    folder = scratch_dir(target)
    prefix = _temp_name(target) if folder != target.parent else f".{target.name}.staging-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    chmod_default(staging, directory=True)
    return staging


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder for ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    staging = staging_dir(target)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(target) from exc
        raise
