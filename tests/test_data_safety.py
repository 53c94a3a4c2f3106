"""A user's dataset is read-only input: the pipeline never deletes, replaces or rewrites a file under a
`data.root` it did not generate itself, through Snakemake, the synthetic generator or its CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, read_only, read_only_how, snapshot, venv_env
from test_workflow import TINY, snakemake, write_override

from heatedasc.ownership import (
    OWNER_MARKER,
    DataRootMissingError,
    ForeignDataRootError,
    check_data_root,
    check_synthetic_root,
)
from heatedasc.synth import generate_dataset

SYNTH = dict(seed=3, clip_seconds=0.5, sample_rate=44100, train_parallel_per_scene=2, train_a_only_per_scene=2,
             evaluate_parallel_per_scene=1, evaluate_a_only_per_scene=1, device_a_48k_stereo=True,
             cities=["lisbon", "vienna"], device_strength_db=12.0, progress=False)


def users_dataset(path: Path) -> Path:
    """A TAU-layout folder that is somebody's data: generated, then stripped of the generator's marker."""
    generate_dataset(path, **SYNTH)
    (path / OWNER_MARKER).unlink()
    return path


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    return users_dataset(tmp_path_factory.mktemp("user") / "my-TAU-copy")


def test_generator_writes_new_empty_or_its_own_folder_only(tmp_path):
    check_synthetic_root(tmp_path / "new")  # missing: fine
    (tmp_path / "empty" / "evaluation_setup").mkdir(parents=True)  # Snakemake pre-creates output folders
    check_synthetic_root(tmp_path / "empty")
    generate_dataset(tmp_path / "ours", **SYNTH)
    assert (tmp_path / "ours" / OWNER_MARKER).is_file()
    before = snapshot(tmp_path / "ours")
    generate_dataset(tmp_path / "ours", **SYNTH)  # regenerating its own folder is allowed and deterministic
    after = snapshot(tmp_path / "ours")
    assert {k: v[0] for k, v in before.items()} == {k: v[0] for k, v in after.items()}


def test_generator_refuses_a_folder_holding_other_files_and_changes_nothing(tmp_path, user_data):
    copy = tmp_path / "mine"
    shutil.copytree(user_data, copy, copy_function=shutil.copy2)
    (copy / "notes.txt").write_text("my notes\n")
    before = snapshot(copy)
    with pytest.raises(ForeignDataRootError) as err:
        generate_dataset(copy, **SYNTH)
    msg = str(err.value)
    assert msg.startswith(f"data.root '{copy}' holds files the synthetic generator did not write (e.g. ")
    assert OWNER_MARKER in msg and "synth.enabled" in msg
    assert snapshot(copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left beside it


def test_synth_cli_refuses_a_users_folder(tmp_path, user_data):
    before = snapshot(user_data)
    proc = subprocess.run([sys.executable, "-m", "heatedasc.cli", "synth", "--root", str(user_data), "--seed", "0",
                           "--clip-seconds", "0.2", "--no-progress"], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 1
    assert f"--root '{user_data}' holds files the synthetic generator did not write" in proc.stderr
    assert "heatedasc synth will not write there" in proc.stderr
    assert snapshot(user_data) == before


def test_the_repositorys_synthetic_folder_may_not_hold_a_users_data(tmp_path):
    home = tmp_path / "data" / "synthetic"
    home.mkdir(parents=True)
    check_data_root("data/synthetic", synth_enabled=False, base=tmp_path)  # empty: fine
    (home / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n")
    with pytest.raises(ForeignDataRootError, match="is the synthetic generator's folder"):
        check_data_root("data/synthetic", synth_enabled=False, base=tmp_path)
    (tmp_path / "elsewhere").mkdir()
    check_data_root(str(tmp_path / "elsewhere"), synth_enabled=False, base=tmp_path)  # a user's root: read-only input


def test_a_data_root_that_does_not_exist_stops_planning_naming_the_key_and_the_path(tmp_path):
    """With synthesis off, no folder at data.root: never a plan (or a result) made from leftovers."""
    with pytest.raises(DataRootMissingError, match=re.escape(
            f"data.root '{tmp_path / 'nowhere'}' does not exist (or is not a folder)")):
        check_data_root(str(tmp_path / "nowhere"), synth_enabled=False, base=tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataRootMissingError, match="a-file' does not exist"):
        check_data_root(str(tmp_path / "a-file"), synth_enabled=False, base=tmp_path)


def demo_override(tmp_path: Path, root: Path, **extra) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(root)
    # every stage runs, on the smallest grid that still has a corrected and an uncorrected run
    cfg["sweep"] = {"correction": ["ref_abc", "none"], "temperature": [1], "loss": ["focal"], "seed": [0]}
    cfg.update(extra)
    return write_override(tmp_path / "mine.yaml", cfg)


@pytest.mark.workflow
@pytest.mark.parametrize("args", [("-n",), ("--cores", "1")])
def test_demo_config_pointed_at_a_users_dataset_stops_at_planning(tmp_path, user_data, args):
    """The demo config (synth.enabled: true) with data.root on a real dataset: refused before any job."""
    before = snapshot(user_data)
    proc = snakemake(tmp_path, *args, configfiles=[REPO / "config" / "smoke.yaml", demo_override(tmp_path, user_data)],
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"data.root '{user_data}' holds files the synthetic generator did not write" in out
    assert "synth.enabled" in out
    assert snapshot(user_data) == before
    assert not (tmp_path / "results").exists()


def test_read_only_makes_a_tree_that_no_write_gets_into(tmp_path):
    """The wrapper the data-safety runs use (conftest.read_only): creating, rewriting or deleting a file fails."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.wav").write_bytes(b"RIFF")
    before = snapshot(root)
    script = (f'for act in "touch {root}/new" "echo x >> {root}/sub/a.wav" "rm {root}/sub/a.wav" "mkdir {root}/d"; do '
              'if sh -c "$act" 2>/dev/null; then echo "WROTE: $act"; fi; done')
    try:
        proc = subprocess.run(read_only(root, ["sh", "-c", script]), capture_output=True, text=True)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    assert snapshot(root) == before
    # the same four writes without the wrapper all get in: the script does write
    unguarded = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert unguarded.stdout.count("WROTE: ") == 4, unguarded.stdout + unguarded.stderr


@pytest.mark.workflow
def test_demo_runs_on_its_synthetic_data_made_read_only(tiny_project):
    """The demo's route: synthesize, then every later job, up to the report, reads the generated folder without
    writing it. The session's tiny project is made that way (conftest.tiny_project: the generator's job, then the
    rest of the DAG with the folder read-only); here its record is checked against the folder as it is now."""
    record = json.loads((tiny_project.parent / "data-safety.json").read_text())
    if record["read_only"] is None:
        pytest.skip(f"the tiny project ran without a read-only data folder here (read_only_how: {read_only_how()})")
    for correction in ("ref_abc", "none"):
        assert (tiny_project / "results" / "runs" / correction / "T1" / "focal" / "seed0" / "metrics.json").is_file()
    assert (tiny_project / "results" / "coefficients" / "coefficients.png").is_file()
    assert (tiny_project / "results" / "report.html").is_file()
    assert len(record["before"]) > 10
    assert snapshot(tiny_project / "data" / "synthetic") == record["before"]


@pytest.mark.workflow
def test_no_recommended_command_writes_under_a_users_data_root(tmp_path):
    """dvc repro, dvc exp run (also one that turns synthesis on), make pull, make clean-results and
    heatedasc synth, with data.root on a user's TAU-layout folder inside the project: not one file of it
    changes (content, size, mtime, inode). The first `dvc repro`, the whole DAG on the paper configuration's
    route (synthesis off), runs with that folder read-only."""
    from test_dvc import new_project, run

    # one correction: every job kind that reads data.root, at half the cost of the usual two
    repo = new_project(tmp_path, tiny_overrides={"data": {"root": "data/my-TAU"}, "synth": {"enabled": False},
                                                 "sweep": {"correction": ["ref_abc"]}})
    users_dataset(repo / "data" / "my-TAU")
    run(repo, "dvc", "add", "data/my-TAU")  # the user versions their data with DVC, as the README says
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "my data")
    root = repo / "data" / "my-TAU"
    before = snapshot(root)

    refused = run(repo, "heatedasc", "synth", "--root", "data/my-TAU", "--seed", "0", check=False)
    assert "heatedasc synth: error: --root 'data/my-TAU' holds files the synthetic generator did not write" in refused
    assert snapshot(root) == before

    try:
        out = run(repo, *read_only(root, ["dvc", "repro"]))
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    assert "Running stage 'train'" in out and (repo / "results" / "tables" / "table2.csv").is_file()
    assert json.loads((repo / "results" / "prepared" / "report.json").read_text())["n_downmixed"] > 0
    assert snapshot(root) == before
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "results")

    # An experiment that reruns only report jobs: what is at stake is DVC's handling of the workspace around it
    # (stash, apply, the data's .dvc file), which any stage that runs goes through.
    out = run(repo, "dvc", "exp", "run", "-S", "config/tiny.yaml:+report.corrections.ref_abc.label=Ours")
    assert "Running stage 'report'" in out and "Stage 'train' didn't change" in out
    assert snapshot(root) == before
    bad = run(repo, "dvc", "exp", "run", "-S", "config/tiny.yaml:synth.enabled=true", check=False)
    assert "data.root 'data/my-TAU' holds files the synthetic generator did not write" in bad
    assert snapshot(root) == before

    remote = tmp_path / "remote"
    remote.mkdir()
    run(repo, "git", "checkout", "--", ".")
    run(repo, "dvc", "remote", "add", "-d", "local", str(remote))
    run(repo, "dvc", "push")
    venv = Path(sys.executable).parent.parent
    run(repo, "make", "-o", f"{venv}/.installed", "pull", f"VENV={venv}")
    run(repo, "make", "clean-results")
    assert not (repo / "results" / "runs").exists()
    assert snapshot(root) == before
