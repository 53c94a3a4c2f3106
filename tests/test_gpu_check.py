"""benchmarks/gpu_check.py: its --quick CPU run (so the script cannot rot), its import footprint, and the
CPU vs CUDA feature tolerance it states (the CUDA half runs where a GPU exists)."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, venv_env

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_prints_every_row_and_writes_its_files(tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    out = tmp_path / "gc"
    env = venv_env()
    env["PYTHONPATH"] = str(REPO / "src")
    env["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()  # torch's own place: a rerun compiles warm
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    table = proc.stdout[proc.stdout.index("GPU check on cpu"):]
    for row in ("device ", "bandwidth floor", "train_epoch samples/s", "configured ", "compiled fp32 (CPU, forced)",
                "configured step vs floor", "evaluation of 5,265 clips", "fresh process",
                "run_training epoch (train + eval)", "paper run (150 epochs)", "GPU-h", "x the floor",
                "precision fp32 vs fp32", "n/a: autocast is CUDA-only",
                "deterministic: true ", "two runs bit-identical yes; kill+resume equal yes",
                "deterministic: false", "features CPU vs device", "within bound yes", "features clips/s",
                "concurrent runs on one device", "2: "):
        assert row in table, row
    assert "FAILED" not in table and "NO" not in table
    for name in ("env.json", "throughput.csv", "eval_batch.csv", "compile_cache.json", "profile.txt", "run.json",
                 "run_history.csv", "precision.csv", "precision.json", "determinism.json", "features.json",
                 "concurrency.csv", "summary.csv", "summary.md", "results.json", "gpu_check.log"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(table.strip().splitlines()) - 1  # every printed row is in the CSV
    assert len(pd.read_csv(out / "run_history.csv")) == 2
    assert pd.read_csv(out / "concurrency.csv")["processes"].tolist() == [2]
    det = json.loads((out / "determinism.json").read_text())
    assert det["resumed_really"] and det["bit_identical"] and det["resume_identical"]
    throughput = pd.read_csv(out / "throughput.csv")
    assert throughput["compile"].tolist() == ["off", "default"] and (throughput["samples_per_s"] > 0).all()


def test_unknown_section_is_an_error_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path / "x"),
                           "--sections", "run,speed"], capture_output=True, text=True, env=venv_env(), timeout=300)
    assert proc.returncode == 2 and "unknown section(s) ['speed']" in proc.stderr


def test_training_and_feature_code_need_no_soundfile_snakemake_or_dvc():
    """gpu_check runs where only torch, numpy, scipy, pandas, pyyaml, tqdm and heatedasc are installed (the GPU
    machine this project is checked on has those, and matplotlib; not soundfile, snakemake or dvc)."""
    code = f"""
import importlib.abc, importlib.util, sys
BLOCKED = {{"soundfile", "snakemake", "dvc", "torchaudio", "librosa", "matplotlib", "jsonschema"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import heatedasc.train, heatedasc.features, heatedasc.runtime, heatedasc.model, heatedasc.losses
spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import yaml, torch
params = yaml.safe_load(open({str(REPO / "params.yaml")!r}))
r = module.feature_parity(params, torch.device("cpu"), n_clips=1, seconds=0.5, n_mels=32)
assert r["log_mel_within_tolerance"], r
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=venv_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok []")


def test_by_default_the_check_is_of_the_gpu_speed_override():
    """The precision section compares fp32 with the configured step: by default params.yaml with
    config/gpu-fast.yaml on top (the deviation under test), with no override params.yaml's fp32 as it is."""
    gc = load_gpu_check()
    assert gc.FAST_OVERRIDE == REPO / "config" / "gpu-fast.yaml"
    fast = gc.load_params(REPO / "params.yaml", [gc.FAST_OVERRIDE])
    assert fast["train"]["amp"] is True and fast["execution"]["train"]["compile"] is True
    paper = gc.load_params(REPO / "params.yaml")
    assert paper["train"]["amp"] is False and paper["execution"]["train"]["compile"] is False
    assert {k: v for k, v in fast.items() if k not in ("train", "execution")} == \
        {k: v for k, v in paper.items() if k not in ("train", "execution")}


def test_float16_cache_bound_accepts_rounding_and_rejects_a_real_difference():
    gc = load_gpu_check()
    rng = np.random.default_rng(0)
    cpu = rng.normal(-8.0, 3.0, size=(4, 16, 50))
    near = gc.log_mel_difference(cpu, cpu + rng.uniform(-1e-3, 1e-3, cpu.shape), tolerance=gc.LOG_MEL_TOL)
    assert near["log_mel_within_tolerance"] and near["cache16_within_bound"]
    assert 0 < near["cache16_fraction_differing"] < 0.5  # float16 rounding flips a few entries by one step
    far = gc.log_mel_difference(cpu, cpu + 0.05 * (rng.random(cpu.shape) < 0.01), tolerance=gc.LOG_MEL_TOL)
    assert not far["log_mel_within_tolerance"] and not far["cache16_within_bound"]
    assert far["log_mel_max_abs_diff"] == pytest.approx(0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs where a GPU exists)")
def test_cuda_features_match_the_cpu_path_within_the_stated_tolerance():
    """LOG_MEL_TOL = 5e-3 on log-mel (measured 1.9e-3 on an H200): float32 rounding of the quietest mel bins
    relative to a frame's loudest; the float16 caches may then differ by that over the bin's std plus one
    float16 step. 10 s paper-setting clips with a 60 dB envelope, devices a/b/c with their own filterbanks."""
    gc = load_gpu_check()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    r = gc.feature_parity(params, torch.device("cuda"), n_clips=6, seconds=10.0)
    assert r["n_mels"] == 256
    assert r["log_mel_max_abs_diff"] <= gc.LOG_MEL_TOL, r
    assert r["cache16_within_bound"], r
