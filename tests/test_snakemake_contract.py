"""The Snakemake behaviours heatedasc.currency relies on, each shown on a toy workflow, so that an upgrade that
changes one fails here, by name, before it can make a stale result look current. pyproject.toml allows only the
Snakemake release these were checked with."""

import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO, venv_env

pytestmark = pytest.mark.workflow

TOY = '''
rule all:
    input: "b.txt", "e.txt"

rule a:
    output: "a.txt"
    shell: "echo a > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    benchmark: "bench/b.tsv"
    shell: "cat {input} > {output}"

rule d:
    output: directory("d")
    shell: "mkdir -p {output} && echo d > {output}/f"

rule e:
    input: "d"
    output: "e.txt"
    shell: "ls {input} > {output}"

# heatedasc.currency adds its input to every rule this way, after the rules are defined
def extra(wildcards):
    return [p for p in ["x.txt"] if os.path.exists(p)]

workflow.get_rule("b").set_input(why=extra)
'''


def snakemake(work: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(work / "Snakefile"), "--directory",
                           str(work), "--rerun-triggers", "software-env", *args], capture_output=True, text=True,
                          env=venv_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned(work: Path, *args: str) -> set[str]:
    out = snakemake(work, "-n", "--quiet", "rules", *args)
    if "Nothing to be done" in out:
        return set()
    block = out.split("Job stats:", 1)[1]
    return {m[1] for m in re.finditer(r"^(\w+)\s+\d+$", block, re.M)} - {"total", "all"}


def date(path: Path, t: float) -> None:
    os.utime(path, (t, t))


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "Snakefile").write_text(TOY)
    snakemake(tmp_path, "--cores", "1")
    base = time.time() - 1000
    for i, p in enumerate(["a.txt", "d/f", "d/.snakemake_timestamp", "d", "bench/b.tsv", "b.txt", "e.txt"]):
        date(tmp_path / p, base + i)
    assert planned(tmp_path) == set()
    return tmp_path, base


def test_the_snakemake_release_is_the_one_the_rerun_mechanism_was_checked_with():
    import tomllib

    spec = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
                ["workflow"] if d.startswith("snakemake>="))
    assert spec == "snakemake>=9.15.0,<9.16", spec
    assert metadata.version("snakemake").startswith("9.15."), metadata.version("snakemake")


# Snakemake skips a newer small input whose checksum it recorded (see below): these two look at dates alone.
DATES_ONLY = ("--max-checksum-file-size", "0")


def test_an_input_newer_than_the_oldest_output_reruns_the_job_whatever_the_rerun_triggers(toy):
    work, base = toy
    date(work / "a.txt", base + 100)  # newer than b.txt (the triggers are software-env only)
    assert planned(work, *DATES_ONLY) == {"b"}


def test_the_benchmark_file_counts_as_an_output_date(toy):
    work, base = toy
    date(work / "bench/b.tsv", base - 100)  # older than a.txt, though b.txt is newer
    assert planned(work, *DATES_ONLY) == {"b"}


def test_a_folder_output_is_dated_by_its_snakemake_timestamp_file(toy):
    work, base = toy
    date(work / "d", base + 100)  # the folder's own date: ignored while .snakemake_timestamp is there
    assert planned(work) == set()
    date(work / "d/.snakemake_timestamp", base + 100)
    assert planned(work) == {"e"}


def test_a_forced_job_reruns_everything_downstream_through_plain_inputs(toy):
    work, _ = toy
    assert planned(work, "-R", "a") == {"a", "b"}
    assert planned(work, "--forcerun", "a.txt") == {"a", "b"}


def test_an_input_added_to_a_rule_after_its_definition_is_evaluated_per_job_and_reruns_it(toy):
    work, base = toy
    (work / "x.txt").write_text("why\n")
    date(work / "x.txt", base + 100)
    assert planned(work) == {"b"}
    assert "reason: Updated input files: x.txt" in snakemake(work, "-n")


def test_a_newer_input_whose_checksum_snakemake_recorded_does_not_rerun(toy):
    """Why each currency token holds new text each time it is written."""
    work, _ = toy
    (work / "x.txt").write_text("why\n")
    snakemake(work, "--cores", "1")  # b ran with x.txt as input: Snakemake recorded its checksum
    (work / "x.txt").write_text("why\n")  # newer, same bytes
    assert planned(work) == set()
    (work / "x.txt").write_text("why, again\n")
    assert planned(work) == {"b"}


def test_braces_and_angle_brackets_in_an_input_path_are_read_as_wildcards_and_path_variables(tmp_path):
    """Why currency's token names replace { } and < (heatedasc.currency._slug)."""
    (tmp_path / "Snakefile").write_text('rule x:\n    input: "a <b>"\n    output: "y"\n    shell: "touch {output}"\n')
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(tmp_path / "Snakefile"),
                           "--directory", str(tmp_path)], capture_output=True, text=True, env=venv_env())
    assert proc.returncode != 0 and "pathvar" in (proc.stdout + proc.stderr).lower()
