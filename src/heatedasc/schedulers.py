"""Checks on the cluster a run is about to use, made before Snakemake touches any output.

Snakemake removes a job's old outputs just before it submits the job; if the submission then fails (the SLURM
controller is down or unreachable), the old results are gone and the run fails anyway. So a SLURM run first asks
the controller whether it answers (`scontrol ping`), and stops naming it if not — nothing removed.
"""

from __future__ import annotations

import shutil
import subprocess

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
