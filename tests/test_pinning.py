"""heatedasc.pinning: the environment that pins every library's kernels, apply()'s checks, and the record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from conftest import REPO, venv_env

from heatedasc import pinning

AVX2 = platform.machine() in ("x86_64", "AMD64") and "avx2" in open("/proc/cpuinfo").read() \
    if os.path.exists("/proc/cpuinfo") else False


def test_avx2_pins_every_library_and_the_threads():
    env = pinning.environment({"kernels": "avx2", "threads": 3})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"] == "AVX2" and env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["NPY_ENABLE_CPU_FEATURES"] == "X86_V3" and env["NPY_DISABLE_CPU_FEATURES"] == ""  # numpy refuses both
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["MKL_DYNAMIC"] == env["OMP_DYNAMIC"] == "FALSE"
    assert all(isinstance(v, str) for v in env.values())


def test_native_pins_only_the_threads():
    env = pinning.environment({"kernels": "native", "threads": 1})
    assert set(env) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_DYNAMIC", "OMP_DYNAMIC"}
    assert pinning.environment(None) == pinning.environment(pinning.DEFAULT)  # the portable default: avx2, 1 thread


@pytest.mark.parametrize("cfg, named", [
    ({"kernels": "avx512"}, "cpu.kernels must be one of avx2, native"),
    ({"threads": 0}, "cpu.threads must be an integer >= 1"),
    ({"threads": True}, "cpu.threads must be an integer >= 1"),
    ({"thread": 2}, "unknown key(s) ['thread']"),
])
def test_a_bad_setting_names_the_key(cfg, named):
    with pytest.raises(ValueError) as err:
        pinning.environment(cfg)
    assert named in str(err.value)


@pytest.fixture
def pinned_env(monkeypatch):
    """This process's environment as the Snakefile would set it (the libraries are loaded already)."""
    for var, value in pinning.environment({"kernels": "avx2", "threads": 1}).items():
        monkeypatch.setenv(var, value)
    threads = torch.get_num_threads()
    monkeypatch.setattr(pinning, "_APPLIED", [])
    yield
    torch.set_num_threads(threads)


def fake_in_effect(**changes):
    found = {"numpy": "X86_V3", "openblas": "Haswell", "openblas_threads": 1, "torch": "AVX2", "torch_threads": 1,
             "mkl": "CNR:AVX2", "mkl_threads": 1, "onednn": "Intel AVX2"}
    return lambda: {**found, **changes}


def test_apply_refuses_a_variable_that_was_not_set_before_the_libraries_loaded(pinned_env, monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    with pytest.raises(pinning.PinningError, match=r"ATEN_CPU_CAPABILITY is 'default' .* needs 'avx2'"):
        pinning.apply({"kernels": "avx2", "threads": 1})


def test_apply_names_the_variable_of_a_library_that_runs_other_kernels(pinned_env, monkeypatch):
    monkeypatch.setattr(pinning, "in_effect", fake_in_effect(numpy="X86_V4", onednn="Intel AVX-512"))
    with pytest.raises(pinning.PinningError) as err:
        pinning.apply({"kernels": "avx2", "threads": 1})
    assert "numpy runs 'X86_V4', expected 'X86_V3' (set by NPY_ENABLE_CPU_FEATURES)" in str(err.value)
    assert "(set by ONEDNN_MAX_CPU_ISA)" in str(err.value)


def test_apply_refuses_a_thread_count_other_than_the_configured_one(pinned_env, monkeypatch):
    monkeypatch.setattr(pinning, "in_effect", fake_in_effect(openblas_threads=2))
    with pytest.raises(pinning.PinningError, match="openblas_threads is 2, expected cpu.threads = 1"):
        pinning.apply({"kernels": "avx2", "threads": 1})


def test_mkl_on_a_non_intel_cpu_is_accepted_with_a_note_the_record_keeps(pinned_env, monkeypatch, caplog):
    monkeypatch.setattr(pinning, "in_effect", fake_in_effect(mkl="CNR:AUTO"))
    result = pinning.apply({"kernels": "avx2", "threads": 1})
    assert result["notes"] and "MKL honours only AUTO and COMPATIBLE on non-Intel CPUs" in result["notes"][0]
    assert "non-Intel" in caplog.text
    stable, volatile = pinning.record()
    assert stable == {"kernels": "avx2", "threads": 1, "variables": result["variables"]}  # the same on every CPU
    assert volatile["in_effect"]["mkl"] == "CNR:AUTO" and volatile["notes"] == result["notes"]


def test_a_job_that_did_not_pin_cannot_write_a_record(monkeypatch):
    monkeypatch.setattr(pinning, "_APPLIED", [])
    with pytest.raises(RuntimeError, match="apply was not called"):
        pinning.record()


def test_the_record_of_a_pinned_job_is_what_currency_expects_from_the_config(monkeypatch):
    """heatedasc.currency compares a record's cpu entry with recorded(config): they must be the same shape."""
    cfg = {"kernels": "avx2", "threads": 3}
    monkeypatch.setattr(pinning, "_APPLIED", [{"kernels": "avx2", "threads": 3, "in_effect": {}, "notes": [],
                                               "variables": {k: v for k, v in pinning.environment(cfg).items()
                                                             if k not in pinning.THREAD_VARIABLES}}])
    assert pinning.record()[0] == pinning.recorded(cfg)
    assert pinning.recorded(cfg)["variables"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "ATEN_CPU_CAPABILITY" not in pinning.recorded({"kernels": "native", "threads": 1})["variables"]


@pytest.mark.skipif(not AVX2, reason="needs an x86-64 CPU with AVX2")
def test_a_fresh_process_with_the_pinned_environment_runs_avx2_kernels_everywhere():
    """What each library reports, read back in a new process that got the environment before loading them."""
    code = ("import json, torch; from heatedasc import pinning; "
            "r = pinning.apply({'kernels': 'avx2', 'threads': 2}); print(json.dumps(r))")
    env = {**venv_env(), **pinning.environment({"kernels": "avx2", "threads": 2}),
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    found = json.loads(proc.stdout.strip().splitlines()[-1])["in_effect"]
    assert {k: found[k] for k in ("torch", "onednn", "numpy", "openblas")} == {
        "torch": "AVX2", "onednn": "Intel AVX2", "numpy": "X86_V3", "openblas": "Haswell"}
    assert found["mkl"] in ("CNR:AVX2", "CNR:AUTO")  # AUTO: a non-Intel CPU (MKL's documented behaviour)
    assert found["torch_threads"] == found["mkl_threads"] == found["openblas_threads"] == 2
    # and without the environment the same call stops, naming the first variable it lacks
    bare = {k: v for k, v in env.items() if k not in pinning.KERNELS["avx2"]}
    proc = subprocess.run([sys.executable, "-c", code], env=bare, capture_output=True, text=True)
    assert proc.returncode != 0 and "PinningError: ATEN_CPU_CAPABILITY is None" in proc.stderr


def run_job_code(code: str, **env_changes: str) -> subprocess.CompletedProcess:
    env = {**venv_env(), **pinning.environment({"kernels": "avx2", "threads": 2}), "PYTHONPATH": str(REPO / "src"),
           **env_changes}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.skipif(not AVX2, reason="needs an x86-64 CPU with AVX2")
def test_a_job_without_torch_is_checked_without_loading_it_and_torch_loaded_later_is_checked_before_the_record():
    """A job that never imports torch (the report's) does not load it to check it; one that loads it after apply()
    gets the pinned thread count from the environment, and record() checks torch before any record is written."""
    apply = "import json, sys; from heatedasc import pinning; r = pinning.apply({'kernels': 'avx2', 'threads': 2}); "
    proc = run_job_code(apply + "print(json.dumps([r['in_effect'], 'torch' in sys.modules]))", OMP_NUM_THREADS="5")
    found, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded and found["torch"] == "not loaded" and found["numpy"] == "X86_V3"
    assert "torch_threads" not in found and found["openblas_threads"] == 2

    # torch loaded during the job (Snakemake had set OMP_NUM_THREADS to the job's 5 threads): pinned all the same
    later = apply + "import torch; torch.ones(3) + 1; print(json.dumps(pinning.record()[1]['in_effect']))"
    proc = run_job_code(later, OMP_NUM_THREADS="5")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["torch"] == "AVX2" and found["onednn"] == "Intel AVX2" and found["torch_threads"] == 2

    # torch loaded later and running another thread count than the pin: the record is refused, naming it
    proc = run_job_code(apply + "import torch; torch.set_num_threads(3); pinning.record()")
    assert proc.returncode != 0
    assert ("PinningError: cpu.kernels avx2 (torch, loaded during the job): torch_threads is 3, expected cpu.threads "
            "= 2") in proc.stderr
