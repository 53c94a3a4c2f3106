"""benchmarks/gpu_check.py, the GPU timing benchmark: its --quick CPU run (so the script cannot rot), its import
footprint and its default settings. What it times is checked for correctness in tests/test_gpu.py."""

import importlib.util
import json
import subprocess
import sys

import pandas as pd
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
    for row in ("device ", "bandwidth floor", "train_epoch samples/s (x eager fp32)", "configured ",
                "compiled fp32 (CPU, forced)", "(1.00x)", "configured step vs floor", "evaluation of 5,265 clips",
                "fresh process", "run_training epoch (train + eval)", "paper run (150 epochs)", "GPU-h", "x the floor",
                "features clips/s", "concurrent runs on one device", "2: "):
        assert row in table, row
    assert "FAILED" not in table and "NO" not in table
    for name in ("env.json", "throughput.csv", "eval_batch.csv", "compile_cache.json", "profile.txt", "run.json",
                 "run_history.csv", "features.json", "concurrency.csv", "summary.csv", "summary.md", "results.json",
                 "gpu_check.log"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(table.strip().splitlines()) - 1  # every printed row is in the CSV
    assert len(pd.read_csv(out / "run_history.csv")) == 2
    assert pd.read_csv(out / "concurrency.csv")["processes"].tolist() == [2]
    throughput = pd.read_csv(out / "throughput.csv")
    assert throughput["compile"].tolist() == ["off", "default"] and (throughput["samples_per_s"] > 0).all()
    # on a CPU the configured step is eager fp32: the baseline the ratios are of
    assert throughput["vs_eager_fp32"].iloc[0] == 1.0
    assert throughput["vs_eager_fp32"].iloc[1] == throughput["samples_per_s"].iloc[1] / throughput["samples_per_s"].iloc[0]
    features = json.loads((out / "features.json").read_text())
    assert features["clips_per_s_on_device"] > 0 and features["clips_per_s_with_copies"] > 0


def test_unknown_section_is_an_error_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path / "x"),
                           "--sections", "run,speed"], capture_output=True, text=True, env=venv_env(), timeout=300)
    assert proc.returncode == 2 and "unknown section(s) ['speed']" in proc.stderr


def test_training_and_feature_code_need_no_soundfile_snakemake_or_dvc(tmp_path):
    """gpu_check runs where only torch, numpy, scipy, pandas, pyyaml, tqdm and heatedasc are installed (the GPU
    machine this project is checked on has those, and matplotlib; not soundfile, snakemake, dvc or jsonschema):
    it imports, and a training run and the batched feature path work, with those blocked."""
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
import pathlib, torch
from heatedasc.synthetic_inputs import coloured_clips
out = pathlib.Path({str(tmp_path)!r})
params = module.load_params(pathlib.Path({str(REPO / "params.yaml")!r}))
caches = [module.write_synthetic_cache(out / "c", split, 24, (24, 32), signal=1.0, seed=seed, device=torch.device("cpu"))
          for split, seed in (("train", 1), ("evaluate", 2))]
cfg = {{**params["train"], **params["execution"]["train"], "epochs": 1, "batch_size": 8, "device": "cpu"}}
metrics = module.run(caches, out / "run", params=params, train_cfg=cfg)
assert metrics["epochs_run"] == 1, metrics
f = params["features"]
from heatedasc.features import LogMelExtractor
extractor = LogMelExtractor(sample_rate=int(params["data"]["sample_rate"]), n_fft=f["n_fft"], hop_length=f["hop_length"],
                            n_mels=32, f_min=f["f_min"], f_max=f["f_max"], log_offset=f["log_offset"],
                            remove_dc=f["remove_dc"])
waves = torch.from_numpy(coloured_clips(2, 0.5, int(params["data"]["sample_rate"]), 0))
assert extractor._forward_batched(waves, torch.zeros(2, dtype=torch.long)).shape[:2] == (2, 32)
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=venv_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok []")


def test_by_default_the_benchmark_times_the_gpu_speed_override():
    """By default the benchmark times params.yaml with config/gpu-fast.yaml on top (the deviation tests/test_gpu.py
    checks against fp32); with no override, params.yaml's fp32 as it is."""
    gc = load_gpu_check()
    assert gc.FAST_OVERRIDE == REPO / "config" / "gpu-fast.yaml"
    fast = gc.load_params(REPO / "params.yaml", [gc.FAST_OVERRIDE])
    assert fast["train"]["amp"] is True and fast["execution"]["train"]["compile"] is True
    paper = gc.load_params(REPO / "params.yaml")
    assert paper["train"]["amp"] is False and paper["execution"]["train"]["compile"] is False
    assert {k: v for k, v in fast.items() if k not in ("train", "execution")} == \
        {k: v for k, v in paper.items() if k not in ("train", "execution")}
