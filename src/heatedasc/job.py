"""The one place every workflow job goes through: `with run_job(snakemake) as log:` in each adapter script.

It sets up the job's log (its Snakemake `log:` file), puts the configured CPU kernels and threads in effect and
checks them (heatedasc.pinning.apply), and when the block succeeds it writes the job's records
(heatedasc.provenance): the stable one — the params, code, CPU kernels, inputs and outputs this very process
used and wrote, by content — to the rule's `provenance` output, the volatile one beside the logs. Nothing of a
record comes from planning: whatever any plan saw or decided, a job records what it ran.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Iterator

from heatedasc import pinning
from heatedasc.fileio import DiskFullError, is_disk_full, write_json
from heatedasc.logutil import job_logging
from heatedasc.provenance import (
    RECORD_OUTPUT,
    SPEED_ONLY,
    stable_record,
    volatile_path,
    volatile_record,
)

WHY_INPUT = "why"  # the input heatedasc.currency adds to a job that is out of date: bookkeeping, not data


def script_path(smk) -> Path:
    """The adapter script this job runs. Snakemake executes a copy named `tmp<random>.<file>` in
    `.snakemake/scripts/`; the original lies in `snakemake.scriptdir` under the part after the first dot."""
    running = Path(getattr(sys.modules.get("__main__"), "__file__", "") or sys.argv[0])
    name = running.name.split(".", 1)[1] if running.name.startswith("tmp") and "." in running.name else running.name
    original = Path(smk.scriptdir) / name
    if not original.is_file():
        raise RuntimeError(f"cannot tell which workflow script runs this job ({running} -> {original} not found)")
    return original


def named_paths(files, skip: tuple[str, ...]) -> dict[str, list[str]]:
    """A Snakemake input/output Namedlist as {name: [paths]} (unnamed items under 'unnamed')."""
    named: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, value in files.items():
        if name in skip:
            seen.update([value] if isinstance(value, str) else list(value))
            continue
        paths = [value] if isinstance(value, str) else list(value)
        named[name] = [str(p) for p in paths]
        seen.update(named[name])
    rest = [str(p) for p in files if str(p) not in seen]
    if rest:
        named["unnamed"] = rest
    return named


def write_records(smk) -> dict:
    """Write the job's stable record (its `provenance` output) and volatile record; return the stable one.
    The CPU settings are the ones pinning.apply put in effect in this process."""
    cpu, cpu_seen = pinning.record()
    record_path = smk.output[RECORD_OUTPUT]
    data_root = smk.config.get("data", {}).get("root")
    stable = stable_record(
        rule=smk.rule,
        wildcards=dict(smk.wildcards.items()),
        params=dict(smk.params.items()),
        script=script_path(smk),
        inputs=named_paths(smk.input, (WHY_INPUT,)),
        outputs=named_paths(smk.output, (RECORD_OUTPUT,)),
        cpu=cpu,
        data_root=data_root,
    )
    write_json(volatile_path(record_path),
               volatile_record(execution=smk.params.get(SPEED_ONLY), extra={"cpu": cpu_seen}))
    write_json(record_path, stable)
    return stable


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: every temporary file is removed on the way out


@contextlib.contextmanager
def run_job(smk) -> Iterator[logging.Logger]:
    """Log to the job's log file; on success write its records. Any error is logged, then re-raised; a full disk
    is one line naming the file and the bytes, and exit status 1."""
    log_file = smk.log[0] if len(smk.log) else None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with job_logging(log_file, f"heatedasc.{smk.rule}") as log:
        try:
            pinning.apply(smk.config.get("cpu"))  # CPU kernels and math threads (heatedasc.pinning), checked
            yield log
            write_records(smk)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            full = exc if isinstance(exc, DiskFullError) else DiskFullError(exc.filename or log_file or ".")
            log.error("%s", full)
            raise SystemExit(1) from None
