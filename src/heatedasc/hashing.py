"""Content digests of files and folders, with an on-disk memo so that a multi-GB input is hashed once.

A file's digest is the SHA-256 of its bytes; a folder's is the SHA-256 over its sorted (relative path, file
digest) pairs. The memo maps a file's identity — path, size, modification time, status-change time (ctime),
inode and device — to its digest. ctime is set by the kernel on every write and cannot be set back by hand, so
an edit that keeps size, mtime and inode still misses the memo. `HEATEDASC_HASH_CACHE` names the memo file
(default `.snakemake/heatedasc/hashes.sqlite` in the working directory); `off` hashes everything every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from heatedasc.fileio import sha256_file

log = logging.getLogger("heatedasc.hashing")

MEMO_ENV = "HEATEDASC_HASH_CACHE"
MEMO_DEFAULT = Path(".snakemake") / "heatedasc" / "hashes.sqlite"
# Snakemake drops this file into directory outputs after a job: not content.
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"


def _identity(st: os.stat_result, path: str) -> tuple:
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Memo:
    """The on-disk digest memo. Any SQLite error (locked by another process, damaged file) degrades to hashing:
    a damaged memo is set aside once, with a warning, and a new one started."""

    def __init__(self, location: str | os.PathLike | None):
        self.location = None if location is None else Path(location)
        self._conn: sqlite3.Connection | None = None
        self._opened = False
        self._lock = threading.Lock()  # one connection, shared by the hashing threads

    def _open(self) -> sqlite3.Connection | None:
        if self._opened:
            return self._conn
        self._opened = True
        if self.location is None:
            return None
        for attempt in (1, 2):
            try:
                self.location.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.location, timeout=30, check_same_thread=False)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS digests (path TEXT, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
                    " inode INTEGER, dev INTEGER, digest TEXT, PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode, dev))"
                )
                conn.execute("SELECT count(*) FROM digests LIMIT 1").fetchone()
                conn.commit()
                self._conn = conn
                return conn
            except sqlite3.DatabaseError as exc:
                if attempt == 1 and _is_damage(exc):
                    aside = self.location.with_name(f"{self.location.name}.damaged-{time.strftime('%Y%m%d%H%M%S')}")
                    with contextlib.suppress(OSError):
                        os.replace(self.location, aside)
                    log.warning("warning: the hash memo %s was damaged (%s); set aside as %s, starting a new one",
                                self.location, exc, aside.name)
                    continue
                log.warning("warning: the hash memo %s cannot be used (%s); hashing without it", self.location, exc)
                return None
            except OSError as exc:
                log.warning("warning: the hash memo %s cannot be used (%s); hashing without it", self.location, exc)
                return None
        return None

    def get(self, key: tuple) -> str | None:
        with self._lock:
            return self._get(key)

    def _get(self, key: tuple) -> str | None:
        conn = self._open()
        if conn is None:
            return None
        try:
            row = conn.execute(
                "SELECT digest FROM digests WHERE path=? AND size=? AND mtime_ns=? AND ctime_ns=? AND inode=? AND dev=?",
                key,
            ).fetchone()
        except sqlite3.Error:  # locked by a concurrent job: hashing is always correct
            return None
        return row[0] if row else None

    def put(self, key: tuple, digest: str) -> None:
        with self._lock:
            self._put(key, digest)

    def _put(self, key: tuple, digest: str) -> None:
        conn = self._open()
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, digest))
            conn.commit()


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "file is encrypted" in text or "corrupt" in text


_MEMOS: dict[str, Memo] = {}


def memo() -> Memo:
    """The process's memo, for the working directory it runs in."""
    setting = os.environ.get(MEMO_ENV, "")
    if setting.lower() in ("off", "none", "0", "false"):
        location = None
    else:
        location = Path(setting or MEMO_DEFAULT).resolve()
    key = str(location)
    if key not in _MEMOS:
        _MEMOS[key] = Memo(location)
    return _MEMOS[key]


def file_digest(path: str | os.PathLike) -> str:
    """The digest of one file, through the memo."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = _identity(st, real)
    m = memo()
    digest = m.get(key)
    if digest is None:
        digest = sha256_file(real)
        if os.stat(real).st_mtime_ns == st.st_mtime_ns:  # not rewritten while it was read
            m.put(key, digest)
    return digest


def remember(path: str | os.PathLike, digest: str) -> None:
    """Tell the memo that `path`, as it is now, has `digest` (after a date change that kept its bytes)."""
    real = os.path.realpath(path)
    memo().put(_identity(os.stat(real), real), digest)


def tree_files(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SNAKEMAKE_TIMESTAMP)


def tree_digest(root: str | os.PathLike, digests: dict[Path, str] | None = None) -> str:
    """One digest for a folder: SHA-256 over the sorted (relative path, file digest) pairs."""
    root = Path(root)
    h = hashlib.sha256()
    for f in tree_files(root):
        d = digests[f] if digests is not None and f in digests else file_digest(f)
        h.update(f"{f.relative_to(root).as_posix()}\0{d}\n".encode())
    return h.hexdigest()


def digest(path: str | os.PathLike) -> str:
    """The content digest of a file or a folder."""
    return tree_digest(path) if Path(path).is_dir() else file_digest(path)


def digest_or_missing(path: str | os.PathLike) -> str:
    return digest(path) if os.path.exists(path) else "missing"


def digest_many(paths: Iterable[str | os.PathLike], workers: int = 2) -> dict[str, str]:
    """Digests of many files and folders, files hashed on `workers` threads (hashlib releases the GIL)."""
    paths = [str(p) for p in paths]
    files: list[Path] = []
    for p in paths:
        if os.path.isdir(p):
            files += tree_files(p)
        elif os.path.exists(p):
            files.append(Path(p))
    unique = sorted(set(files))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        file_digests = dict(zip(unique, pool.map(file_digest, unique)))
    out = {}
    for p in paths:
        if os.path.isdir(p):
            out[p] = tree_digest(p, file_digests)
        elif os.path.exists(p):
            out[p] = file_digests[Path(p)]
        else:
            out[p] = "missing"
    return out
