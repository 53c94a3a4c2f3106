"""The feature cache on disk (docs/reproduction.md §3): one float16 array (N, n_mels, n_frames) per (split, correction)
and a CSV index of its rows; written in resumable, checksummed shards, read back memory-mapped.

This module only stores and loads; what goes into a cache is computed by ``heatedasc.features``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from heatedasc.fileio import DiskFullError, atomic_path, check_space, is_disk_full, resumable_dir, sha256_file

INDEX_COLUMNS = ("row", "filename", "scene_label", "label", "device", "identifier", "group")
SHARD_BATCHES = 8  # batches per resumable shard (a performance/resume knob; the result never depends on it)
_SHARD_NAME = re.compile(r"^rows-(\d+)-(\d+)\.([0-9a-f]{16})\.npy$")


def cache_key(rows: pd.DataFrame, extractor, stats: dict, n_samples: int, origin: dict | None = None) -> str:
    """sha256 over everything that determines a split's cache: its manifest rows (in order), the
    standardisation stats, the extractor settings and filterbanks (a ``LogMelExtractor``), the clip length, and
    `origin` (content digests of the audio and the code)."""
    h = hashlib.sha256()
    h.update(b"heatedasc-features-v1\0")
    h.update(json.dumps(origin or {}, sort_keys=True).encode())
    h.update(rows.to_csv(index=False).encode())
    for key in ("mean", "std"):
        h.update(np.ascontiguousarray(stats[key], dtype=np.float64).tobytes())
    h.update(json.dumps({**extractor.settings(), "n_samples": int(n_samples)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(extractor.filterbanks.detach().cpu().numpy(), dtype=np.float32).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ writing
def _shard_path(folder: Path, start: int, stop: int, digest: str) -> Path:
    return folder / f"rows-{start:08d}-{stop:08d}.{digest[:16]}.npy"


def _valid_shard(path: Path, start: int, stop: int, shape: tuple[int, int]) -> bool:
    """A shard counts only if its name's checksum matches its bytes and its header has the right shape."""
    m = _SHARD_NAME.match(path.name)
    if not m or (int(m[1]), int(m[2])) != (start, stop):
        return False
    try:
        if sha256_file(path)[:16] != m[3]:
            return False
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array.dtype == np.float16 and array.shape == (stop - start, *shape)
    except (OSError, ValueError):
        return False


def _write_shard(folder: Path, start: int, feats16: np.ndarray) -> Path:
    """Write one shard atomically: temp name, checksum, rename to ``rows-<start>-<stop>.<sha16>.npy``."""
    tmp = folder / f".tmp-rows-{start:08d}-{os.getpid()}.npy"
    check_space(tmp, feats16.nbytes + 128)
    try:
        np.save(tmp, feats16, allow_pickle=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        final = _shard_path(folder, start, start + len(feats16), sha256_file(tmp))
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(tmp, feats16.nbytes) from exc
        raise
    return final


def parts_root(out_npy: str | os.PathLike) -> Path:
    """Where the resumable shards of the cache `out_npy` are kept (see ShardedCacheWriter)."""
    return resumable_dir(out_npy, "parts")


class ShardedCacheWriter:
    """A split's float16 cache of ``n_rows`` clips of ``clip_shape``, written shard by shard, resumably.

    Shards of ``shard_rows`` rows live in the workflow's scratch folder (heatedasc.fileio; beside the cache only
    outside a workflow directory), never in the output folder DVC tracks, in ``parts-<cache path>/<key[:32]>/``,
    each written atomically with its row range and checksum in its name. Opening the writer deletes the shards of
    any other key (another configuration) and stale temp files, validates the shards already there and drops
    corrupt, truncated or misnamed ones; ``missing`` is what is left to compute. ``assemble`` checks the free
    space, then writes the shards one after the other into ``out_npy`` with plain writes (a memory map on a full
    disk dies of SIGBUS with nothing said); the bytes do not depend on the shard size.
    """

    def __init__(self, out_npy: str | os.PathLike, key: str, n_rows: int, clip_shape: tuple[int, int],
                 shard_rows: int) -> None:
        self.out_npy = Path(out_npy)
        self.n_rows = int(n_rows)
        self.clip_shape: tuple[int, int] = (int(clip_shape[0]), int(clip_shape[1]))
        self.parts_root = parts_root(self.out_npy)
        self.parts = self.parts_root / key[:32]
        if self.parts_root.exists():  # shards of another configuration (or stale temp files) are never reused
            for other in self.parts_root.iterdir():
                if other != self.parts:
                    shutil.rmtree(other) if other.is_dir() else other.unlink()
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob(".tmp-*"):
            stale.unlink()

        self.ranges = [(s, min(s + shard_rows, self.n_rows)) for s in range(0, self.n_rows, shard_rows)]
        self.done: dict[tuple[int, int], Path] = {}
        for path in sorted(self.parts.glob("rows-*.npy")):
            m = _SHARD_NAME.match(path.name)
            key_range = (int(m[1]), int(m[2])) if m else None
            if key_range in self.ranges and key_range not in self.done and _valid_shard(path, *key_range,
                                                                                       self.clip_shape):
                self.done[key_range] = path
            else:
                path.unlink()  # corrupt, truncated, misnamed or from another shard size: recompute

    @property
    def missing(self) -> list[tuple[int, int]]:
        """Row ranges (start, stop) of the shards still to write, in order."""
        return [r for r in self.ranges if r not in self.done]

    def write_shard(self, start: int, feats16: np.ndarray) -> None:
        """Store rows ``start .. start + len(feats16)`` (float16, one of the ``missing`` ranges)."""
        self.done[start, start + len(feats16)] = _write_shard(self.parts, start, feats16)

    def assemble(self) -> str:
        """Join every shard into ``out_npy`` (atomically) and return the file's sha256."""
        missing = self.missing
        if missing:
            raise ValueError(f"{self.out_npy}: shards for rows {missing} were never written")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": (self.n_rows, *self.clip_shape)}
        size = self.n_rows * int(np.prod(self.clip_shape)) * 2 + 128
        with atomic_path(self.out_npy, size=size) as tmp:
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, header)
                for start, stop in self.ranges:
                    shard = np.load(self.done[start, stop], mmap_mode="r", allow_pickle=False)
                    fh.write(np.ascontiguousarray(shard, dtype=np.float16).tobytes())
            digest = sha256_file(tmp)
        return digest

    def remove_parts(self) -> None:
        shutil.rmtree(self.parts_root, ignore_errors=True)


def write_index(rows: pd.DataFrame, out_index_csv: str | os.PathLike) -> None:
    """The cache's row index: ``row`` 0..N-1 and the manifest columns of INDEX_COLUMNS, atomically."""
    index = rows[list(INDEX_COLUMNS[1:])].copy()
    index.insert(0, "row", np.arange(len(rows)))
    with atomic_path(out_index_csv) as tmp:
        index.to_csv(tmp, index=False)


# ------------------------------------------------------------------------------------------ reading
@dataclass
class FeatureCache:
    """A float16 feature array (N, n_mels, n_frames) and its row index."""

    features: np.ndarray
    index: pd.DataFrame
    npy_path: Path
    index_path: Path

    @property
    def clip_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])  # type: ignore[return-value]


def load_feature_cache(npy_path: str | os.PathLike, index_path: str | os.PathLike) -> FeatureCache:
    """Open a cache (memory-mapped) and check that the csv index matches the array row for row."""
    npy_path, index_path = Path(npy_path), Path(index_path)
    if not npy_path.is_file():
        raise ValueError(f"{npy_path}: feature cache not found")
    if not index_path.is_file():
        raise ValueError(f"{index_path}: feature index not found")
    features = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    if features.ndim != 3:
        raise ValueError(f"{npy_path}: expected a (N, n_mels, n_frames) array, got shape {features.shape}")
    index = pd.read_csv(index_path, dtype={"device": str, "identifier": str, "group": str, "filename": str})
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{index_path}: missing column(s) {', '.join(missing)}")
    if len(index) != features.shape[0]:
        raise ValueError(f"{index_path}: {len(index)} rows but {npy_path} holds {features.shape[0]} clips")
    if not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise ValueError(f"{index_path}: column 'row' must be 0..{len(index) - 1} in order")
    return FeatureCache(features, index, npy_path, index_path)
