"""Pinned kernels (heatedasc.pinning, cpu.kernels avx2): a tiny pipeline run as on two machines writes the same
bytes in every CPU stage and every training run.

Machine A is the session's tiny project (conftest.tiny_project): this CPU with two cores, one clip thread per
feature job and one thread per job. Machine B has one core (taskset), two clip threads per feature job and two
threads per training job (Snakemake's *_NUM_THREADS 2), and an environment that asks every library for other
kernels and threads — the ceilings a pre-AVX2 processor would impose (ATEN_CPU_CAPABILITY=default,
ONEDNN_MAX_CPU_ISA=SSE41, numpy without X86_V3, OPENBLAS_CORETYPE=Nehalem, MKL_ENABLE_INSTRUCTIONS=SSE4_2)
and other thread counts. Without pinning those settings change the outputs (benchmarks/cpu_spread.py); with it
the Snakefile overrides them before any job starts, and each job checks what its libraries run.
A real other CPUID (QEMU's Haswell and EPYC-Rome) is benchmarks/cpu_spread.py's qemu settings.
"""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, tiny_project_config, venv_env

sys.path.insert(0, str(REPO / "benchmarks"))
from cpu_spread import stage_hashes  # noqa: E402

MACHINE_B = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Nehalem",
             "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MKL_DYNAMIC": "TRUE"}


def run_machine_b(workdir):
    """The tiny project's DAG up to training, from nothing, on machine B."""
    cfg = tiny_project_config()  # data.root relative to the workdir: no path in any output
    cfg["resources"] = {**cfg["resources"], "features": {"cpus_per_task": 2}, "train": {"cpus_per_task": 2}}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "snakemake", "train_all", "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(REPO / "params.yaml"), str(workdir / "tiny.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**venv_env(), **MACHINE_B}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def cpu_records(workdir):
    """{record: (stable cpu entry, what the libraries reported)} of every job."""
    out = {}
    for f in sorted((workdir / "results").rglob("*provenance.json")):
        rel = f.relative_to(workdir)
        volatile = json.loads((workdir / "logs" / "provenance" / rel).read_text())
        out[rel.as_posix()] = (json.loads(f.read_text())["cpu"], volatile["cpu"]["in_effect"])
    return out


@pytest.mark.workflow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_pinned_cpu_stages_and_training_are_identical_on_two_emulated_machines(tiny_project, tmp_path):
    a, b = tiny_project, tmp_path / "b"
    b.mkdir()
    out = run_machine_b(b)
    # B's feature and train jobs got two threads (A's one): the variation the identity holds against
    assert out.count("threads: 2") >= 2 * 2 + 2, out[-3000:]  # at least the 4 feature and 2 train jobs

    ha, hb = stage_hashes(a), stage_hashes(b)
    assert set(hb) == {"synthesize", "prepare", "coefficients", "features", "runs"}
    assert len(hb["features"]) == 2 * (2 * 2 + 1) and len(hb["runs"]) == 2 * 5  # per correction: 2 x (.npy, .csv), stats
    for stage in hb:
        # every file B made is in A, byte for byte (A also ran the coefficient plot and the report)
        differ = sorted(k for k in hb[stage] if ha[stage].get(k) != hb[stage][k])
        assert not differ, f"{stage}: {len(differ)} of {len(hb[stage])} files differ, e.g. {differ[:3]}"

    # every job pinned alike, and its libraries reported the pinned kernels and one thread on both machines
    ra, rb = cpu_records(a), cpu_records(b)
    ra = {record: ra[record] for record in rb}  # A also ran the report's jobs
    assert len(rb) >= 12
    for record, (stable, found) in ra.items():
        assert rb[record][0] == stable and stable["kernels"] == "avx2" and stable["threads"] == 1, record
        b_found = rb[record][1]
        for found_here in (found, b_found):
            assert found_here["numpy"] == "X86_V3" and found_here["openblas"] == "Haswell", record
            assert found_here["openblas_threads"] == 1, record
            if found_here["torch"] == "not loaded":  # a job that never imports torch is not made to load it
                continue
            assert found_here["torch"] == "AVX2" and found_here["onednn"] == "Intel AVX2", record
            assert found_here["torch_threads"] == found_here["mkl_threads"] == 1, record
    # torch ran, pinned, in every job that computes with it: the mean spectra (its STFT), the features and training;
    # the coefficient jobs divide spectra with numpy and never load it
    with_torch = {r for r, (_, found) in ra.items() if found["torch"] != "not loaded"}
    assert with_torch == {r for r, (_, found) in rb.items() if found["torch"] != "not loaded"}
    assert {r.split("/")[1] for r in with_torch} == {"coefficients", "features", "runs"}, sorted(with_torch)
    assert {r for r in with_torch if r.startswith("results/coefficients/")} == {
        "results/coefficients/mean_spectra.provenance.json"}, sorted(with_torch)
    plot = cpu_records(a)["results/coefficients/coefficients.provenance.json"][1]  # only A ran the coefficient plot
    assert plot["torch"] == "not loaded" and plot["numpy"] == "X86_V3", plot
    assert sum(r.startswith("results/runs/") for r in with_torch) == 2
