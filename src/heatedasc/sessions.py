"""What a Snakemake run of this workflow does around its jobs (called from the Snakefile).

* Before any output is removed (`onstart`), a SLURM run asks the controller whether it answers (`scontrol ping`)
  and stops, naming it, if not: Snakemake removes a job's old outputs just before submitting it, so a submission
  that then fails would lose good results for nothing.
* A run killed outright (`kill -9`, a node that died) leaves Snakemake's locks behind, and the next run would stop
  with a LockException until `snakemake --unlock`. Each run records itself as a holder (process id, its start
  time, host) once it holds the locks; a later run on the same host removes the locks when every recorded holder
  is gone. Two runs at once are still refused by Snakemake as usual (the first is alive).
* Inside a DVC stage, Snakemake ends when `dvc` does (the kernel sends it SIGTERM), instead of running on as an
  orphan that holds the locks.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

log = logging.getLogger("heatedasc.sessions")
LOCKS = Path(".snakemake") / "locks"
HOLDERS = Path(".snakemake") / "heatedasc" / "holders"
PR_SET_PDEATHSIG = 1

PING_TIMEOUT_S = 30


class ClusterUnreachable(RuntimeError):
    pass


def executor_name(workflow) -> str:
    plugin = getattr(workflow, "executor_plugin", None)
    name = getattr(plugin, "name", "") or ""
    return name.replace("snakemake-executor-plugin-", "")


def check_slurm_controller(scontrol: str | None = None, timeout: float = PING_TIMEOUT_S) -> None:
    """Raise ClusterUnreachable unless `scontrol ping` reports a responding controller."""
    scontrol = scontrol or shutil.which("scontrol")
    if scontrol is None:
        raise ClusterUnreachable("the SLURM executor is selected but `scontrol` is not on PATH: is this a SLURM "
                                 "login node? Nothing was submitted or removed.")
    try:
        proc = subprocess.run([scontrol, "ping"], capture_output=True, text=True, timeout=timeout)
        text = (proc.stdout + proc.stderr).strip()
        ok = proc.returncode == 0 and "is UP" in text
    except subprocess.TimeoutExpired:
        text, ok = f"no answer within {timeout:g} s", False
    if not ok:
        raise ClusterUnreachable(f"the SLURM controller does not answer (`scontrol ping`: {text or 'no output'}). "
                                 "Nothing was submitted or removed; run again when it is back.")


def check_cluster_reachable(workflow) -> None:
    """Called at Snakemake's onstart (after planning, before any output is removed): for a SLURM run, the
    controller must answer."""
    if executor_name(workflow) == "slurm":
        check_slurm_controller()


# ------------------------------------------------------------------------------------------- locks


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (field 22 of /proc/<pid>/stat), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_holder() -> None:
    """This run holds the locks now (called at Snakemake's onstart)."""
    HOLDERS.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (HOLDERS / f"{pid}.json").write_text(json.dumps(
        {"pid": pid, "start_time": _start_time(pid), "host": socket.gethostname()}) + "\n")


def release_holder() -> None:
    (HOLDERS / f"{os.getpid()}.json").unlink(missing_ok=True)


def _gone(holder: dict) -> bool:
    """True only when the holder was on this host and its process has ended (not one that reused its pid)."""
    if holder.get("host") != socket.gethostname():
        return False
    started = _start_time(int(holder["pid"]))
    return started is None or started != holder.get("start_time")


def clear_stale_locks() -> list[str]:
    """Remove Snakemake's locks when every run recorded as holding them is gone; return the holders found dead."""
    if not LOCKS.is_dir() or not any(LOCKS.iterdir()) or not HOLDERS.is_dir():
        return []
    holders = []
    for f in sorted(HOLDERS.glob("*.json")):
        try:
            holders.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            return []  # unreadable: cannot prove anything
    if not holders or not all(_gone(h) for h in holders):
        return []
    for lock in LOCKS.iterdir():
        lock.unlink(missing_ok=True)
    for h in holders:
        (HOLDERS / f"{h['pid']}.json").unlink(missing_ok=True)
    dead = [f"pid {h['pid']}" for h in holders]
    log.warning("warning: removed the locks of a snakemake run that is no longer running (%s; killed?); "
                "its finished jobs are kept, the rest run again", ", ".join(dead))
    return dead


# ------------------------------------------------------------------------------------------ DVC


def end_with_dvc() -> None:
    """Inside a DVC stage (DVC sets DVC_STAGE), ask the kernel for SIGTERM when the parent, `dvc`, ends."""
    if "DVC_STAGE" not in os.environ or not Path("/proc/self").exists():
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # dvc is already gone
        os.kill(os.getpid(), signal.SIGTERM)
