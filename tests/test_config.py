"""params.yaml carries the reproduction decisions (docs/reproduction.md); the schema and the cross-key checks
reject bad configs by name."""

import copy

import jsonschema
import pytest
import yaml
from conftest import REPO

from heatedasc.config import check_consistency, load_config

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


# The paper's configuration has one copy outside params.yaml: the key tables of docs/reproduction.md §1-§8, typed in
# from the paper (and [2] where it is silent), which tests/test_docs.py checks value by value against params.yaml.
# These two make sure that copy is whole: no recipe key of params.yaml goes without a stated value.
RECIPE_SECTIONS = ("data", "correction", "features", "model", "loss", "train", "sweep")  # docs/reproduction.md §1-§8


def doc_key_values() -> dict[str, object]:
    """{key: value} of every row of docs/reproduction.md's key tables that states one key and one value in a value
    column (tests/test_docs.py: VALUE_COLUMNS), and of §8's artefact table, whose settings column states the values
    of its keys column in order (T = `1` for `report.table2_temperature`)."""
    import re

    from test_docs import BACKTICKED, DOC, VALUE_COLUMNS, cited_key, markdown_tables

    stated = {}
    for header, rows in markdown_tables(DOC.read_text()):
        key_column = next((header.index(h) for h in ("key", "keys") if h in header), None)
        if key_column is None:
            continue
        value_columns = [i for i, h in enumerate(header) if h in VALUE_COLUMNS or h == "settings"]
        for _, cells in rows:
            keys = [k for k in map(cited_key, BACKTICKED.findall(cells[key_column])) if k]
            for i in value_columns:
                if header[i] == "settings":
                    values = BACKTICKED.findall(cells[i])
                    if len(values) == len(keys):
                        stated.update(zip(keys, map(yaml.safe_load, values)))
                elif len(keys) == 1 and (literal := re.match(r"^`([^`]+)`", cells[i])):
                    stated.setdefault(keys[0], yaml.safe_load(literal.group(1)))  # its first column: params.yaml's
    return stated


def test_every_recipe_key_of_params_yaml_is_stated_in_the_reproduction_doc():
    """A key is stated with its value, or inside a mapping stated whole (`correction.references`)."""
    stated = doc_key_values()
    recipe = [key for key, _ in _leaves({s: PARAMS[s] for s in RECIPE_SECTIONS})]
    assert len(recipe) > 40, "params.yaml's recipe sections lost their keys?"
    unstated = [key for key in recipe
                if not any(".".join(key.split(".")[:n]) in stated for n in range(1, key.count(".") + 2))]
    assert not unstated, "params.yaml keys docs/reproduction.md states no value for:\n" + "\n".join(unstated)


def test_the_report_settings_the_doc_states_for_the_paper_artefacts_are_those_of_params_yaml():
    """docs/reproduction.md §8: Table 2 at T = 1, Fig. 2 of Ref.ABC's focal run of seed 0 at T = 1, 5, 10, 35."""
    stated = {key: value for key, value in doc_key_values().items() if key.startswith("report.")}
    assert {"report.table2_temperature", "report.fig2_temperatures", "report.fig2_correction", "report.fig2_loss",
            "report.fig2_seed", "report.fig3_loss"} <= set(stated), stated
    assert {key: get(PARAMS, key) for key in stated} == stated


@pytest.mark.parametrize("overrides", [[], ["config/smoke.yaml"], ["config/gpu-fast.yaml"],
                                       ["config/smoke.yaml", "config/gpu-fast.yaml"]])
def test_params_yaml_alone_and_with_each_override_file_passes_the_schema_and_the_cross_checks(overrides):
    merged = load_config([REPO / "params.yaml", *(REPO / f for f in overrides)])  # the loader every reader runs
    jsonschema.validate(merged, SCHEMA)
    check_consistency(merged)
    for name in overrides:  # each override really took effect
        for dotted, value in _leaves(yaml.safe_load((REPO / name).read_text())):
            if name == overrides[-1] or dotted not in dict(_leaves(yaml.safe_load((REPO / overrides[-1]).read_text()))):
                assert get(merged, dotted) == value, (name, dotted)


@pytest.mark.parametrize("section, key", [("train", "amp"), ("train", "holdout_fraction"), ("synth", "cities")])
def test_schema_requires_every_key_the_code_reads(section, key):
    cfg = copy.deepcopy(PARAMS)
    cfg["synth"]["enabled"] = True  # synth keys are required only when the generator runs
    del cfg[section][key]
    with pytest.raises(jsonschema.ValidationError, match=f"'{key}' is a required property"):
        jsonschema.validate(cfg, SCHEMA)


def test_params_yaml_trains_in_fp32_and_the_gpu_speed_settings_are_one_override():
    """docs/reproduction.md §6: the paper trained in float32, so params.yaml does (no autocast, eager step); bf16
    autocast and the compiled step are config/gpu-fast.yaml, and no other config file turns either on."""
    from heatedasc.config import load_config

    assert PARAMS["train"]["amp"] is False and PARAMS["execution"]["train"]["compile"] is False
    fast_file = REPO / "config" / "gpu-fast.yaml"
    fast = yaml.safe_load(fast_file.read_text())
    assert fast == {"train": {"amp": True, "amp_dtype": "bf16"}, "execution": {"train": {"compile": True}}}
    merged = load_config([REPO / "params.yaml", fast_file])  # passes the schema and the cross-checks
    assert merged["train"]["amp"] is True and merged["execution"]["train"]["compile"] is True
    for other in sorted(set((REPO / "config").glob("*.yaml")) - {fast_file}):
        cfg = yaml.safe_load(other.read_text())
        assert "amp" not in cfg.get("train", {}), other
        assert "compile" not in cfg.get("execution", {}).get("train", {}), other


def test_schema_rejects_a_misspelt_key():
    cfg = copy.deepcopy(PARAMS)
    cfg["features"]["n_mel"] = 128
    with pytest.raises(jsonschema.ValidationError, match="'n_mel' was unexpected"):
        jsonschema.validate(cfg, SCHEMA)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["sweep"].update(correction=["ref_abc", "ref_xyz"]),
     "sweep.correction: correction 'ref_xyz' is not a key of correction.references"),
    (lambda c: c["report"].update(fig2_correction="abc"), "report.fig2_correction: correction 'abc'"),
    (lambda c: c["report"]["table3_rows"][2].update(correction="refbc"),
     r"report.table3_rows\[2\] \(Ref.BC_T30\): correction 'refbc'"),
    (lambda c: c["report"]["comparisons"][0]["b"].update(correction="no"),
     r"report.comparisons\[0\].b \(spectrum correction \(Ref.ABC\) vs none\): correction 'no'"),
    (lambda c: c["correction"]["references"].update(ref_x=["a", "d"]),
     r"correction.references.ref_x: device\(s\) \['d'\] are not in data.devices"),
])
def test_cross_key_errors_name_the_key(edit, message):
    cfg = copy.deepcopy(PARAMS)
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        check_consistency(cfg)


def _git_project(tmp_path):
    import shutil
    import subprocess

    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "config" / "smoke.yaml", tmp_path / "config" / "smoke.yaml")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "c"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env={**__import__("os").environ, **env})
    return tmp_path


def _edit(path, section, key, value):
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_an_edit_that_a_later_config_file_overrides_is_named(tmp_path):
    from heatedasc.config import check_hidden_edits, hidden_edits

    repo = _git_project(tmp_path)
    files = [repo / "params.yaml", repo / "config" / "smoke.yaml"]
    assert hidden_edits(files) == []
    _edit(repo / "params.yaml", "train", "lr", 0.1)  # smoke.yaml does not set it: takes effect
    _edit(repo / "config" / "smoke.yaml", "train", "epochs", 20)  # the last file always wins
    assert hidden_edits(files) == []
    _edit(repo / "params.yaml", "train", "epochs", 20)  # smoke.yaml sets train.epochs: no effect
    problems = hidden_edits(files)
    assert problems == [
        f"{files[0]}: train.epochs changed since the last commit (150 -> 20), but {files[1]}, merged after it, "
        f"sets train.epochs too, so the change has no effect; set it in {files[1]} instead "
        f"(dvc exp run -S '{files[1]}:train.epochs=...')"
    ]
    with pytest.raises(ValueError, match="train.epochs changed since the last commit"):
        check_hidden_edits(files)


def test_config_write_refuses_a_hidden_edit_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from conftest import venv_env

    repo = _git_project(tmp_path)
    _edit(repo / "params.yaml", "model", "bn_eps", 0.01)  # smoke.yaml does not set it
    out = repo / "results" / "config.yaml"
    cmd = [sys.executable, "-m", "heatedasc.cli", "config", "--write", str(out)]
    ok = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=venv_env())
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(out.read_text())["model"]["bn_eps"] == 0.01
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 8  # smoke.yaml's value: what runs
    out.unlink()
    _edit(repo / "params.yaml", "features", "n_mels", 128)  # smoke.yaml sets 64
    bad = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=venv_env())
    assert bad.returncode == 1
    assert "params.yaml: features.n_mels changed since the last commit (256 -> 128)" in bad.stderr
    assert not out.exists()
