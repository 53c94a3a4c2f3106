"""`dvc exp run -S key=value` rewrites params.yaml (or the config file named with -S file:key=value) through DVC's
own code: it loads the file with ruamel, applies the override with Hydra, merges the result back (lists are
replaced whole) and writes it. The committed files are written in the form that round trip keeps (every list in
block style, no comment after a list), so an experiment's diff is the value it changed, never a reformatted file,
and no comment is lost."""

import difflib
import shutil

import pytest
import yaml
from conftest import REPO
from dvc.utils.hydra import apply_overrides

FILES = ["params.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml"))]


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def a_scalar(tree: dict, prefix: str = "") -> tuple[str, object]:
    for key, value in tree.items():
        if isinstance(value, dict):
            return a_scalar(value, f"{prefix}{key}.")
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return f"{prefix}{key}", value
    raise AssertionError("no scalar key")


@pytest.mark.parametrize("name", FILES)
def test_an_experiment_that_sets_a_value_to_itself_leaves_the_file_byte_identical(tmp_path, name):
    copy = tmp_path / "f.yaml"
    shutil.copy(REPO / name, copy)
    key, value = a_scalar(yaml.safe_load(copy.read_text()))
    apply_overrides(str(copy), [f"{key}={value}"])  # what `dvc exp run -S '{name}:{key}={value}'` does
    before, after = (REPO / name).read_text(), copy.read_text()
    assert after == before, "\n".join(changed_lines(before, after))


def test_an_experiment_changes_exactly_the_lines_of_the_values_it_sets(tmp_path):
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(str(copy), ["train.epochs=7", "sweep.seed=[0,1,2,3]"])
    changed = changed_lines((REPO / "params.yaml").read_text(), copy.read_text())
    assert [line.split("#")[0].rstrip() for line in changed] == ["-  epochs: 150", "+  epochs: 7", "+  - 3"], changed
