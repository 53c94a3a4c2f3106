"""CPU kernel pinning: the one place that decides which vector kernels, and how many threads, every job's
numpy, OpenBLAS, torch (ATen), oneDNN and MKL use — so CPU outputs are the same bytes on any x86-64 CPU with AVX2.

Each library picks its kernels at load time from the CPU it finds (AVX-512 here, AVX2 there), and the kernels
round differently; thread counts change the order of reductions. Config key ``cpu`` (params.yaml):

* ``cpu.kernels: avx2`` (default) — every library held at its AVX2 kernels, which any x86-64 CPU with AVX2 runs;
  ``cpu.kernels: native`` — no pinning: each library's fastest kernels for this CPU (results differ by CPU);
* ``cpu.threads`` — the math threads of every job (torch intra-op, MKL, OpenBLAS, OpenMP), never the machine's
  core count. The feature stages spread whole clips over the job's cores on top (results do not depend on that).

Two steps, because the switches are environment variables that a library reads once, when it loads:

1. ``environment(cfg)`` — the variables to set before numpy or torch load. The Snakefile puts them into its own
   environment at parse time; every job (a fresh Python process, or a SLURM job) inherits them.
2. ``apply(cfg)`` — at the start of every job (heatedasc.job.run_job, the one place every job goes through):
   sets the thread counts, then checks what each loaded library actually runs (a mismatch is a PinningError
   naming the variable) and keeps the settings for the job's provenance (record(): heatedasc.job writes the
   pinned settings into the stable record, what the libraries reported into the volatile one). torch is checked
   only where the job loads it: a job that never imports it (the report's) is not made to pay its 1.5 s import;
   one that imports it later (prepare, to resample) gets the pinned thread count from the environment, and
   record() checks torch, oneDNN and MKL before any record is written.

The variables, each checked against its library's documentation and measured (benchmarks/cpu_kernels.py,
benchmarks/cpu_spread.py):

* ``ATEN_CPU_CAPABILITY=avx2`` — torch's ATen vector kernels (default | avx2 | avx512); an invalid value is only
  a warning, so apply() reads torch.backends.cpu.get_cpu_capability().
* ``ONEDNN_MAX_CPU_ISA=AVX2`` — the ISA ceiling of oneDNN's JIT kernels (torch's CPU convolutions, torchaudio's
  resampler); it wins over the older DNNL_MAX_CPU_ISA. Read back from oneDNN's verbose header ("isa:Intel AVX2").
* ``MKL_CBWR=AVX2`` (+ ``MKL_ENABLE_INSTRUCTIONS=AVX2``) — MKL's conditional numerical reproducibility, given a
  fixed thread count (``MKL_DYNAMIC=FALSE``). Read back from MKL's verbose line ("CNR:AVX2"). MKL documents that a
  non-Intel CPU honours only AUTO and COMPATIBLE (measured under QEMU's EPYC-Rome: CNR:AUTO, and torch's CPU
  FFT/GEMM give other bits), and its COMPATIBLE branch computes sqrt with rsqrtps, whose result is the
  processor's own approximation. So the pipeline does not use MKL on the CPU at all: the CPU feature path is
  numpy/scipy (heatedasc.dsp), CPU training avoids torch's GEMM, exp and sqrt (heatedasc.model, .losses,
  .train). On a non-Intel CPU apply() accepts CNR:AUTO with a note.
* ``NPY_ENABLE_CPU_FEATURES=X86_V3`` — numpy 2.4 dispatches (targets X86_V3 X86_V4 AVX512_ICL AVX512_SPR above the
  X86_V2 baseline) to its AVX2/FMA3 kernels only: its float64 exp/log use SVML on X86_V4 and libm below. An
  unknown name is only an ImportWarning, so apply() reads numpy's __cpu_features__; NPY_DISABLE_CPU_FEATURES
  must be unset (numpy refuses both), so it is emptied.
* ``OPENBLAS_CORETYPE=Haswell`` — the kernels of numpy's bundled OpenBLAS (DYNAMIC_ARCH; the features' mel
  product); read back with threadpoolctl.
* ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` = cpu.threads and ``MKL_DYNAMIC``/``OMP_DYNAMIC``
  = FALSE. Snakemake sets a job's *_NUM_THREADS to the job's threads, so apply() sets the counts at run time.

What the pin cannot cover: a CPU without AVX2 (numpy refuses X86_V3 at import, apply() stops on torch's
DEFAULT); other package versions or another libm (glibc) than the lock's environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
import tempfile
from typing import Iterator, Mapping

log = logging.getLogger(__name__)

DEFAULT = {"kernels": "avx2", "threads": 1}

# cpu.kernels -> the variables that hold every library at one instruction-set level.
KERNELS: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NPY_ENABLE_CPU_FEATURES": "X86_V3",
        "NPY_DISABLE_CPU_FEATURES": "",  # numpy refuses both variables at once; empty counts as unset
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "native": {},
}
# What apply() must find in effect for each pinned level (library -> value reported by in_effect()).
EXPECTED = {
    "avx2": {"torch": "AVX2", "onednn": "Intel AVX2", "mkl": "CNR:AVX2", "numpy": "X86_V3", "openblas": "Haswell"},
    "native": {},
}
# The variable that sets each library's kernels, named in errors.
VARIABLE = {"torch": "ATEN_CPU_CAPABILITY", "onednn": "ONEDNN_MAX_CPU_ISA", "mkl": "MKL_CBWR",
            "numpy": "NPY_ENABLE_CPU_FEATURES", "openblas": "OPENBLAS_CORETYPE"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class PinningError(RuntimeError):
    """The kernels or threads in effect are not the configured ones; the message names the variable."""


def settings(cpu_cfg: Mapping | None) -> dict:
    """The `cpu` config block with defaults filled in, validated (ValueError naming the key)."""
    cfg = {**DEFAULT, **dict(cpu_cfg or {})}
    unknown = sorted(set(cfg) - set(DEFAULT))
    if unknown:
        raise ValueError(f"cpu: unknown key(s) {unknown} (known: {sorted(DEFAULT)})")
    if cfg["kernels"] not in KERNELS:
        raise ValueError(f"cpu.kernels must be one of {', '.join(KERNELS)}, got {cfg['kernels']!r}")
    threads = cfg["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"cpu.threads must be an integer >= 1, got {threads!r}")
    return cfg


def environment(cpu_cfg: Mapping | None) -> dict[str, str]:
    """The environment variables to set before numpy/torch load (the Snakefile does os.environ.update)."""
    cfg = settings(cpu_cfg)
    threads = str(cfg["threads"])
    env = {var: threads for var in THREAD_VARIABLES}
    env.update({"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"})
    env.update(KERNELS[cfg["kernels"]])
    return env


# ------------------------------------------------------------------------------------ what is in effect
@contextlib.contextmanager
def _captured_stdout() -> Iterator[list[str]]:
    """Capture what C code prints to file descriptor 1 (MKL's and oneDNN's verbose lines)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield text
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def _torch_side() -> dict:
    import torch

    out = {"torch": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    with _captured_stdout() as text:
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            torch.ones(4, 4) @ torch.ones(4, 4)
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            torch.nn.functional.conv2d(torch.ones(2, 1, 8, 8), torch.ones(4, 1, 3, 3))
    lines = text[0]
    cnr = re.search(r"MKL_VERBOSE SGEMM.*?(CNR:\S+).*?NThr:(\d+)", lines)
    isa = re.search(r"onednn_verbose,.*cpu,isa:([^\n]+)", lines)
    out["mkl"] = cnr.group(1) if cnr else "unknown"
    out["mkl_threads"] = int(cnr.group(2)) if cnr else None
    if isa:  # oneDNN prints its header once per process, at the first primitive run with verbose on
        _ONEDNN_ISA.append(isa.group(1).strip())
    out["onednn"] = _ONEDNN_ISA[0] if _ONEDNN_ISA else "unknown"
    return out


_ONEDNN_ISA: list[str] = []


def _numpy_side() -> dict:
    import numpy as np  # noqa: F401  (loads the dispatch tables)

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x: the same two names from the old path (hence no-redef for mypy)
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # type: ignore[no-redef]
    enabled = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    out = {"numpy": enabled[-1] if enabled else "baseline"}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        out["openblas"], out["openblas_threads"] = "unknown (threadpoolctl not installed)", None
        return out
    blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", "")]
    out["openblas"] = blas[0].get("architecture") if blas else "not loaded"
    out["openblas_threads"] = blas[0].get("num_threads") if blas else None
    return out


# What torch loads and reports: a job that never imports torch runs none of them, so they are checked only once
# torch is loaded (at apply(), or at record() when the job imported it later).
TORCH_SIDE = ("torch", "onednn", "mkl", "torch_threads", "mkl_threads")
NUMPY_SIDE = ("numpy", "openblas", "openblas_threads")


def in_effect() -> dict:
    """The kernels and thread counts each library loaded in this process runs, as the libraries report them
    (numpy's always; torch's, oneDNN's and MKL's once torch is loaded, else "not loaded")."""
    torch_side = _torch_side() if "torch" in sys.modules else {"torch": "not loaded"}
    return {**_numpy_side(), **torch_side}


def _check(cfg: dict, found: dict, libs: tuple[str, ...], where: str = "") -> list[str]:
    """Check `found` against the pin of `cfg`, among `libs` (kernels and thread counts): a PinningError naming every
    problem (`where` says when the libraries were checked), else the notes, each also logged as a warning."""
    problems, notes = [], []
    threads = cfg["threads"]
    for lib, value in EXPECTED[cfg["kernels"]].items():
        if lib not in libs or found.get(lib) == value:
            continue
        if lib == "mkl" and found.get(lib) == "CNR:AUTO":
            notes.append(
                f"MKL runs CNR:AUTO although MKL_CBWR={os.environ.get('MKL_CBWR')}: MKL honours only AUTO and "
                "COMPATIBLE on non-Intel CPUs, so torch's CPU FFT, GEMM and sqrt/log/exp (MKL) round differently "
                "here than on Intel CPUs; the pipeline's CPU stages and CPU training do not use them"
            )
            continue
        problems.append(f"{lib} runs {found.get(lib)!r}, expected {value!r} (set by {VARIABLE[lib]})")
    for key in ("torch_threads", "mkl_threads", "openblas_threads"):
        if key in libs and found.get(key) not in (None, threads):
            problems.append(f"{key} is {found.get(key)}, expected cpu.threads = {threads}")
    if problems:
        raise PinningError(f"cpu.kernels {cfg['kernels']}{where}: " + "; ".join(problems))
    for note in notes:
        log.warning("%s", note)
    return notes


def apply(cpu_cfg: Mapping | None) -> dict:
    """Set the configured thread counts in this job, check the kernels in effect, and return the settings for
    the job's provenance record (also kept for record(), which heatedasc.job writes into the job's records).

    PinningError names the variable when the process did not get the pinned environment before its libraries
    loaded (e.g. a script started outside the workflow) or a library runs other kernels than pinned. One
    documented exception is accepted with a note: MKL on a non-Intel CPU, which honours only MKL_CBWR AUTO
    or COMPATIBLE and so runs AUTO (the pipeline does not use MKL on the CPU).
    """
    cfg = settings(cpu_cfg)
    wanted = environment(cfg)
    # Snakemake sets the *_NUM_THREADS variables of a job to the job's threads: thread counts are set here instead.
    for var, value in wanted.items():
        if var not in THREAD_VARIABLES and os.environ.get(var, "") != value:
            raise PinningError(
                f"{var} is {os.environ.get(var)!r} in this job's environment, but cpu.kernels {cfg['kernels']} "
                f"needs {value!r}: the variable must be set before numpy and torch load (the Snakefile sets it from "
                "heatedasc.pinning.environment; run jobs through the workflow)"
            )
    threads = cfg["threads"]
    # A library loaded later in this job reads its thread count from the environment when it loads: the pinned one.
    os.environ.update({var: str(threads) for var in THREAD_VARIABLES})
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)  # also MKL's and OpenMP's count
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # numpy's OpenBLAS (and any other BLAS/OpenMP pool loaded)
    except ImportError:
        pass
    found = in_effect()
    notes = _check(cfg, found, NUMPY_SIDE + (TORCH_SIDE if torch is not None else ()))
    variables = {k: v for k, v in wanted.items() if k not in THREAD_VARIABLES}
    result = {"kernels": cfg["kernels"], "threads": threads, "variables": variables, "in_effect": found,
              "notes": notes}
    _APPLIED[:] = [result]
    return result


_APPLIED: list[dict] = []


def recorded(cpu_cfg: Mapping | None) -> dict:
    """What a job's stable record holds of the `cpu` block: the pinned settings, the same on every machine (so an
    identical job leaves an identical record). heatedasc.currency compares it with the record's."""
    cfg = settings(cpu_cfg)
    variables = {k: v for k, v in environment(cfg).items() if k not in THREAD_VARIABLES}
    return {"kernels": cfg["kernels"], "threads": cfg["threads"], "variables": variables}


def record() -> tuple[dict, dict]:
    """(stable, volatile) parts of this job's CPU settings for its provenance records.

    Stable (beside the outputs, in dvc.lock's hashes): recorded() of the settings applied. Volatile
    (logs/provenance/): what each library reported here.
    """
    if not _APPLIED:
        raise RuntimeError("heatedasc.pinning.apply was not called in this job")
    applied = _APPLIED[0]
    if "torch" in sys.modules and applied["in_effect"].get("torch") == "not loaded":
        # torch was loaded during the job, after apply(), with the pinned environment: checked now, before any
        # record is written, so a job whose torch ran other kernels or threads records nothing
        found = _torch_side()
        applied["notes"].extend(_check(applied, found, TORCH_SIDE, " (torch, loaded during the job)"))
        applied["in_effect"].update(found)
    stable = {"kernels": applied["kernels"], "threads": applied["threads"], "variables": applied["variables"]}
    return stable, {"in_effect": applied["in_effect"], "notes": applied["notes"]}
