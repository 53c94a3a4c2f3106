"""The `heatedasc` command follows CLI conventions: --version, whole help texts, errors on stderr with
exit status 1, one config loader whose default is the pipeline's own config files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, venv_env

from heatedasc import cli

COMMANDS = ("synth", "config", "report", "lineage", "compare")


def heatedasc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "heatedasc.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=venv_env(), timeout=300)


def test_version_prints_the_package_version():
    proc = heatedasc("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "heatedasc 0.1.0"


def test_no_command_is_a_usage_error_on_stderr():
    proc = heatedasc()
    assert proc.returncode == 1 and proc.stdout == ""
    assert "heatedasc: error: the following arguments are required: COMMAND" in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_a_whole_help_text(command):
    proc = heatedasc(command, "--help")
    assert proc.returncode == 0
    description = cli.build_parser()._subparsers._group_actions[0].choices[command].description
    assert description.endswith(".") and len(description) > 80  # a sentence, not a fragment
    assert " ".join(description.split()[:6]) in " ".join(proc.stdout.split())


def test_top_level_help_lists_every_command_and_the_exit_status():
    out = " ".join(heatedasc("--help").stdout.split())
    for command in COMMANDS:
        assert command in out
    assert "Exit status: 0 success; 1 an error" in out


def test_a_missing_config_file_is_an_error_on_stderr_with_status_1(tmp_path):
    proc = heatedasc("config", "--configfile", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"heatedasc config: error: config file not found: {tmp_path / 'nope.yaml'}"


def test_a_bad_key_is_named_on_stderr(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epoch": 5}}))
    proc = heatedasc("config", "--configfile", str(REPO / "params.yaml"), str(bad))
    assert proc.returncode == 1
    assert "heatedasc config: error: config key train: Additional properties are not allowed ('epoch' was unexpected)" \
        in proc.stderr


def test_config_defaults_to_the_pipelines_own_config_files():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    files = params["pipeline"]["configfiles"].split()
    expected = yaml.safe_load(heatedasc("config", "--configfile", *files).stdout)
    proc = heatedasc("config")
    assert proc.returncode == 0
    assert yaml.safe_load(proc.stdout) == expected
    assert expected["data"]["root"] == "data/synthetic"  # the demo: params.yaml + config/smoke.yaml


def test_lineage_of_something_no_job_made_is_an_error(tmp_path):
    proc = heatedasc("lineage", str(tmp_path / "x.csv"), "--no-plan", "--results", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("heatedasc lineage: error: ") and "no provenance record" in proc.stderr
