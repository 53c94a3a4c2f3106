"""Content digests (heatedasc.hashing): MD5 as DVC computes it, never trusting a date, reading a file only when
neither the memo nor DVC's own state knows it as it is now."""

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import venv_env

from heatedasc import hashing


@pytest.fixture
def memo_at(tmp_path, monkeypatch):
    location = tmp_path / "memo.sqlite"
    monkeypatch.setenv(hashing.MEMO_ENV, str(location))
    monkeypatch.setenv(hashing.DVC_STATE_ENV, "off")
    return location


@pytest.fixture
def reads(monkeypatch):
    """The files heatedasc.hashing actually reads."""
    seen = []
    real = hashing.read_digest

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(hashing, "read_digest", counting)
    return seen


def test_a_file_digest_is_its_md5_and_a_folder_digest_covers_names_and_contents(tmp_path, memo_at):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"beta")
    assert hashing.digest(tmp_path / "d" / "a.txt") == hashlib.md5(b"alpha").hexdigest()
    expected = hashlib.md5(f"a.txt\0{hashlib.md5(b'alpha').hexdigest()}\nsub/b.txt\0"
                           f"{hashlib.md5(b'beta').hexdigest()}\n".encode()).hexdigest()
    assert hashing.digest(tmp_path / "d") == expected
    (tmp_path / "d" / ".snakemake_timestamp").write_text("")  # Snakemake's marker is not content
    assert hashing.digest(tmp_path / "d") == expected
    (tmp_path / "d" / "sub" / "b.txt").rename(tmp_path / "d" / "sub" / "c.txt")
    assert hashing.digest(tmp_path / "d") != expected
    assert hashing.digest_or_missing(tmp_path / "nothing") == "missing"


def test_the_memo_spares_a_second_read_but_not_an_edit_whose_size_and_date_were_put_back(tmp_path, memo_at, reads):
    f = tmp_path / "x.bin"
    f.write_bytes(b"0123456789")
    first = hashing.file_digest(f)
    assert hashing.file_digest(f) == first and reads == ["x.bin"]
    st = f.stat()
    with open(f, "r+b") as fh:  # same size, same inode
        fh.write(b"9")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the date put back by hand: only the ctime moved
    assert (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert hashing.file_digest(f) == hashlib.md5(b"9123456789").hexdigest() != first
    assert reads == ["x.bin", "x.bin"]


def test_a_damaged_memo_is_set_aside_with_one_warning_and_rebuilt(tmp_path, memo_at, caplog):
    memo_at.write_bytes(os.urandom(4096))
    hashing._MEMOS.clear()
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    with caplog.at_level(logging.WARNING, logger="heatedasc.hashing"):
        assert hashing.file_digest(f) == hashlib.md5(b"abc").hexdigest()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "was damaged" in warnings[0] and "starting a new one" in warnings[0]
    assert list(tmp_path.glob("memo.sqlite.damaged-*")) and memo_at.is_file()
    hashing._MEMOS.clear()
    assert hashing.memo().get(hashing._identity(f.stat(), os.path.realpath(f))) == hashlib.md5(b"abc").hexdigest()


def test_a_file_dvc_just_wrote_is_taken_from_dvcs_state_until_anything_touches_it(tmp_path, monkeypatch, reads):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**venv_env(), "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    (repo / "data").mkdir()
    (repo / "data" / "a.bin").write_bytes(b"written by dvc")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=repo, check=True, env=env)
    (repo / "data" / "a.bin").unlink()
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], cwd=repo, check=True, env=env)
    monkeypatch.chdir(repo)
    monkeypatch.setenv(hashing.MEMO_ENV, "off")
    monkeypatch.delenv(hashing.DVC_STATE_ENV, raising=False)
    f = repo / "data" / "a.bin"
    assert hashing.file_digest(f) == hashlib.md5(b"written by dvc").hexdigest()
    assert reads == []  # DVC knew it
    # Edited in place with its size and date put back: DVC's key (inode, mtime, size) still matches, but the
    # ctime moved, so its state is not trusted and the file is read.
    st = f.stat()
    time.sleep(2.1)
    f.write_bytes(b"edited by hand")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashing.file_digest(f) == hashlib.md5(b"edited by hand").hexdigest() and reads == ["a.bin"]


MANY = """
import json, sys
from heatedasc.hashing import file_digest
print(json.dumps({p: file_digest(p) for p in sys.argv[1:]}))
"""


def test_many_processes_hashing_the_same_files_at_once_share_the_memo_without_error_or_wrong_digest(tmp_path,
                                                                                                     monkeypatch):
    """What 144 training jobs starting at once do on a cluster, here 48 processes on one machine (each run in
    a fresh interpreter, all against one memo file): every digest right, no error printed."""
    files = []
    for i in range(6):
        f = tmp_path / f"cache{i}.npy"
        f.write_bytes(os.urandom(1 << 20) + bytes([i]))
        files.append(str(f))
    truth = {f: hashlib.md5(Path(f).read_bytes()).hexdigest() for f in files}
    env = {**venv_env(), hashing.MEMO_ENV: str(tmp_path / "memo.sqlite"), hashing.DVC_STATE_ENV: "off"}
    procs = [subprocess.Popen([sys.executable, "-c", MANY, *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(48)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and err == "", err
        assert json.loads(out) == truth
    memo = hashing.Memo(tmp_path / "memo.sqlite")
    assert all(memo.get(hashing._identity(os.stat(f), os.path.realpath(f))) == truth[f] for f in files)
