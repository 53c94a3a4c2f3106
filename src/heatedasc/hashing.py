"""Content digests of files and folders, read as few times as possible.

A file's digest is the MD5 of its bytes — DVC's content hash, so a file DVC has just written (`dvc pull`, `dvc
checkout`) is known without reading it; a folder's is the MD5 over its sorted (relative path, file digest) pairs.
Digests are looked up, in order:

1. in the memo, which maps a file's identity — path, size, modification time, status-change time (ctime), inode
   and device — to its digest. ctime is set by the kernel on every write and cannot be set back by hand, so an
   edit that keeps size, mtime and inode still misses it. `HEATEDASC_HASH_CACHE` names the memo file (default
   `.snakemake/heatedasc/hashes-<host>.sqlite` in the working directory); `off` turns it off;
2. in DVC's own state of the repository the working directory lies in (inode, mtime and size -> MD5, saved as
   DVC writes or hashes a file), trusted only while the file's ctime equals its mtime, i.e. nothing touched it
   since it was written. `HEATEDASC_DVC_STATE=off` turns this off;
3. by reading the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

ALGORITHM = "md5"  # what DVC content-addresses with

log = logging.getLogger("heatedasc.hashing")

MEMO_ENV = "HEATEDASC_HASH_CACHE"
DVC_STATE_ENV = "HEATEDASC_DVC_STATE"
WRITTEN_SLACK_NS = 2_000_000_000  # ctime within this of mtime: the file is as it was written
# One memo file per host: on a cluster's shared file system (often NFS, where SQLite's own documentation calls its
# file locking unreliable between machines) processes of different nodes never share one; those of one node do,
# with SQLite's locking on that node. Correctness never rests on the memo: any error there means hashing.
MEMO_DEFAULT = Path(".snakemake") / "heatedasc" / f"hashes-{socket.gethostname()}.sqlite"
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


def read_digest(path: str | os.PathLike) -> str:
    """The digest of a file's bytes, read in chunks (constant memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, ALGORITHM).hexdigest()


class DvcState:
    """DVC's record of the files it wrote or hashed in one repository (read only)."""

    def __init__(self, root: Path):
        self.root = root
        self._repo = None
        self._opened = False
        self._lock = threading.Lock()

    def _open(self):
        if self._opened:
            return self._repo
        self._opened = True
        try:
            from dvc.repo import Repo

            self._repo = Repo(str(self.root))
        except Exception as exc:  # no DVC, or a repository it cannot open: read the files instead
            log.debug("DVC's state is not available (%s)", exc)
        return self._repo

    def md5(self, path: str, st: os.stat_result) -> str | None:
        if abs(st.st_ctime_ns - st.st_mtime_ns) > WRITTEN_SLACK_NS:
            return None  # touched since it was written (re-dated, or edited and its date put back)
        with self._lock:
            repo = self._open()
            if repo is None:
                return None
            try:
                _, info = repo.state.get(path, repo.fs)
            except Exception:
                return None
        return info.value if info is not None and info.name == "md5" else None


_DVC_STATES: dict[Path, DvcState] = {}


def dvc_state() -> DvcState | None:
    """DVC's state of the repository the working directory lies in, or None (none, or turned off)."""
    if os.environ.get(DVC_STATE_ENV, "").lower() in ("off", "0", "false", "none"):
        return None
    here = Path.cwd().resolve()
    root = next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), None)
    if root is None:
        return None
    return _DVC_STATES.setdefault(root, DvcState(root))


def known_digest(path: str | os.PathLike) -> str | None:
    """The digest of one file from the memo or DVC's state, without reading it (None: it must be read). DVC's
    state is used from the thread that opened it only: call this from one thread."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = _identity(st, real)
    digest = memo().get(key)
    if digest is None:
        state = dvc_state()
        names = dict.fromkeys([os.path.abspath(path), real])  # DVC keys a file by the path it wrote it at
        digest = next((d for name in names if (d := state.md5(name, st))), None) if state else None
        if digest is not None:
            memo().put(key, digest)
    return digest


def _read_and_remember(path: str | os.PathLike) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    digest = read_digest(real)
    if os.stat(real).st_mtime_ns == st.st_mtime_ns:  # not rewritten while it was read
        memo().put(_identity(st, real), digest)
    return digest


def file_digest(path: str | os.PathLike) -> str:
    """The digest of one file: from the memo, from DVC's state, or read."""
    return known_digest(path) or _read_and_remember(path)


def remember(path: str | os.PathLike, digest: str) -> None:
    """Tell the memo that `path`, as it is now, has `digest` (after a date change that kept its bytes)."""
    real = os.path.realpath(path)
    memo().put(_identity(os.stat(real), real), digest)


def tree_files(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != SNAKEMAKE_TIMESTAMP)


def tree_digest(root: str | os.PathLike, digests: dict[Path, str] | None = None) -> str:
    """One digest for a folder: the hash over the sorted (relative path, file digest) pairs."""
    root = Path(root)
    h = hashlib.new(ALGORITHM)
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
    names = [str(p) for p in paths]
    files: list[Path] = []
    for p in names:
        if os.path.isdir(p):
            files += tree_files(p)
        elif os.path.exists(p):
            files.append(Path(p))
    unique = sorted(set(files))
    file_digests = {f: d for f in unique if (d := known_digest(f))}  # in this thread (DVC's state is not shared)
    unread = [f for f in unique if f not in file_digests]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        file_digests.update(zip(unread, pool.map(_read_and_remember, unread)))
    out: dict[str, str] = {}
    for p in names:
        if os.path.isdir(p):
            out[p] = tree_digest(p, file_digests)
        elif os.path.exists(p):
            out[p] = file_digests[Path(p)]
        else:
            out[p] = "missing"
    return out
