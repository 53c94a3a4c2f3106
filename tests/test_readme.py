"""Every command README.md prints runs as printed: the Snakemake lines of "Running it yourself" and of the SLURM
section as dry runs (`-n` added, nothing else changed) in a copy of the working tree, and the cheap `heatedasc`
lines for real. (`dvc repro`, `dvc exp run -S ...`, `make pull` run for real in tests/test_dvc.py and
tests/test_data_safety.py; the training runs themselves in tests/test_workflow.py; `snakemake --report` in
tests/test_reports.py.)"""

import re
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, venv_env
from test_dvc import copy_working_tree
from test_workflow import empty_tau_root

pytestmark = pytest.mark.workflow

README = (REPO / "README.md").read_text()


def readme_commands(program: str) -> list[str]:
    """Every `program ...` in backticks in README.md (inline code and ```bash blocks)."""
    inline = re.findall(r"`(" + program + r" [^`]+)`", README)
    blocks = [line.split("#", 1)[0].strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
              for line in block.splitlines()]
    found = inline + [b for b in blocks if b.startswith(program + " ") and "`" not in b]
    # `snakemake --report` needs finished results: tests/test_reports.py runs it on a finished project
    return [c for c in dict.fromkeys(found) if "..." not in c and "<" not in c and "--report" not in c]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The working tree as a newcomer has it (no results), empty TAU layouts standing in for a real copy (at
    /path/to/TAU's place and at params.yaml's default data.root), and the `my.yaml` override the README mentions."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "repo"
    work.mkdir()
    copy_working_tree(work)
    tau = root / "TAU"
    default_root = work / yaml.safe_load((work / "params.yaml").read_text())["data"]["root"]
    for folder in (tau, default_root):
        empty_tau_root(folder)
    (work / "my.yaml").write_text("train: {epochs: 3}\n")
    return work, tau


SNAKEMAKE_LINES = readme_commands("snakemake")


def test_the_readme_prints_the_commands_this_test_runs():
    assert len(SNAKEMAKE_LINES) >= 9, SNAKEMAKE_LINES
    assert any("--profile slurm" in c for c in SNAKEMAKE_LINES)
    assert any(c.startswith("snakemake features_all ") for c in SNAKEMAKE_LINES)  # targets before --configfile


@pytest.mark.parametrize("command", SNAKEMAKE_LINES)
def test_every_snakemake_line_of_the_readme_plans(checkout, command):
    work, tau = checkout
    argv = shlex.split(command.replace("/path/to/TAU", str(tau)).replace("$PWD", str(work)))
    argv = [a for a in argv if a not in ("--sdm", "apptainer")]  # no Apptainer here (the recipe is not built)
    plans = not {"--lint", "--unlock"} & set(argv)  # those two change nothing: run as printed
    extra = ["-n", "--quiet", "rules"] if plans else []
    proc = subprocess.run([sys.executable, "-m", "snakemake", *argv[1:], *extra], cwd=work,
                          capture_output=True, text=True, env={**venv_env(), "PYTHONPATH": str(work / "src")},
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if plans:
        assert "Job stats:" in out and re.search(r"^total\s+\d+$", out, re.M), out[-2000:]


def test_a_readme_data_root_that_does_not_exist_stops_planning_naming_it(checkout):
    work, _ = checkout
    command = next(c for c in SNAKEMAKE_LINES if "/path/to/TAU" in c and " -n " in f" {c} ")
    proc = subprocess.run([sys.executable, "-m", "snakemake", *shlex.split(command)[1:]], cwd=work,
                          capture_output=True, text=True, env={**venv_env(), "PYTHONPATH": str(work / "src")})
    assert proc.returncode != 0 and "data.root '/path/to/TAU' does not exist" in proc.stdout + proc.stderr


def test_the_heatedasc_lines_of_the_readme_run(checkout):
    work, _ = checkout
    env = {**venv_env(), "PYTHONPATH": str(work / "src")}
    heatedasc = [sys.executable, "-m", "heatedasc.cli"]
    for argv in (["config"], ["config", "--configfile", "config/smoke.yaml"], ["config", "--configfile", "my.yaml"]):
        proc = subprocess.run(heatedasc + argv, cwd=work, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, (argv, proc.stderr)
    merged = subprocess.run(heatedasc + ["config", "--configfile", "my.yaml"], cwd=work, capture_output=True,
                            text=True, env=env).stdout
    assert "epochs: 3" in merged and "n_mels: 256" in merged  # over params.yaml, as Snakemake merges
    # in the repository itself (read only): the committed summary against git's HEAD
    proc = subprocess.run(heatedasc + ["compare"], cwd=REPO, capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 0 and proc.stdout.startswith("identical"), proc.stdout + proc.stderr
    for argv in (["lineage", "results/tables/table3.csv", "--no-plan"], ["report"]):
        proc = subprocess.run(heatedasc + argv, cwd=work, capture_output=True, text=True, env=env)
        assert proc.returncode == 1 and proc.stderr.startswith(f"heatedasc {argv[0]}: error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback, before any result exists
