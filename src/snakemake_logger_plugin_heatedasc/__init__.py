"""A compact Snakemake log for terminals: `snakemake --logger heatedasc`.

One line per job as it starts, with the count of finished jobs; failures with their log's last lines;
warnings and errors as they come. Everything else (reasons, inputs, resources) stays in Snakemake's full
log under .snakemake/log/ and in each job's own log under logs/. Jobs run under it write their log records
only to their log files and draw no progress bars (heatedasc.logutil reads HEATEDASC_COMPACT_LOG).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent

COMPACT_ENV = "HEATEDASC_COMPACT_LOG"  # heatedasc.logutil.COMPACT_ENV (not imported: keep the plugin light)
LOG_TAIL_LINES = 15
SHORT_NAMES = {"correction": "", "temperature": "T=", "loss": "", "seed": "seed=", "split": ""}


def describe(rule: str, wildcards: dict | None) -> str:
    if not wildcards:
        return rule
    parts = [f"{SHORT_NAMES.get(k, k + '=')}{v}" for k, v in wildcards.items()]
    return f"{rule} {' '.join(parts)}"


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        os.environ[COMPACT_ENV] = "1"  # inherited by local jobs: their own output goes to their log files
        self.stream = sys.stdout if getattr(self.common_settings, "stdout", False) else sys.stderr
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.done = 0
        self.total = None
        self.running: dict[int, tuple[str, float]] = {}

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a log handler must never stop the workflow
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event == LogEvent.RUN_INFO:
            stats = getattr(record, "stats", None) or {}
            self.total = stats.get("total", self.total)
            jobs = ", ".join(f"{rule} {n}" for rule, n in stats.items() if rule != "total")
            self.write(f"{self.total} job(s) to run: {jobs}" if stats else str(record.msg))
        elif event == LogEvent.JOB_INFO:
            label = describe(record.rule_name, getattr(record, "wildcards", None))
            self.running[record.jobid] = (label, time.time())
            total = self.total if self.total is not None else "?"
            self.write(f"[{time.strftime('%H:%M:%S')}] [{self.done}/{total} done] {label}")
        elif event == LogEvent.PROGRESS:
            self.done, self.total = record.done, record.total
            if record.done == record.total:
                self.write(f"{record.done} of {record.total} jobs done in {self._elapsed()}")
        elif event == LogEvent.JOB_ERROR:
            label = describe(record.rule_name, None)
            self.write(f"FAILED {label} (job {record.jobid}); log: {', '.join(record.log) or 'none'}")
            started = self.running.get(record.jobid, (None, self.wall_started))[1]
            for log_file in record.log:
                try:
                    if Path(log_file).stat().st_mtime < started - 1.0:
                        # a log left by an earlier run: the job failed before it began (e.g. it was never submitted)
                        self.write(f"    {log_file} is from an earlier run: this job did not start; see the error above")
                        continue
                    lines = Path(log_file).read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                except OSError:
                    continue
                for line in lines:
                    self.write(f"    {line}")
        elif event in (LogEvent.JOB_STARTED, LogEvent.JOB_FINISHED, LogEvent.SHELLCMD, LogEvent.RULEGRAPH,
                       LogEvent.DEBUG_DAG, LogEvent.RESOURCES_INFO, LogEvent.WORKFLOW_STARTED, LogEvent.GROUP_INFO):
            return
        elif record.levelno >= logging.WARNING or event == LogEvent.ERROR:
            self.write(self.format(record) if self.formatter else str(record.getMessage()))
        else:
            message = record.getMessage() if record.msg is not None else ""
            if message.startswith(("Nothing to be done", "Complete log", "This was a dry-run")):
                self.write(message)

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return False

    @property
    def needs_rulegraph(self) -> bool:
        return False
