"""`dvc exp run -S key=value` rewrites params.yaml (and any config file named with -S file:key=value) through
DVC's own YAML round trip (ruamel). The committed files are written in the form that round trip keeps, so an
experiment's diff is the one value it changed, never a reformatted file."""

import difflib
import shutil

import pytest
from conftest import REPO
from dvc.utils.serialize import modify_yaml

FILES = ["params.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("name", FILES)
def test_dvcs_yaml_round_trip_leaves_the_file_byte_identical(tmp_path, name):
    copy = tmp_path / "f.yaml"
    shutil.copy(REPO / name, copy)
    with modify_yaml(copy):
        pass
    before, after = (REPO / name).read_text(), copy.read_text()
    assert after == before, "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), name, "round trip"))


def test_an_experiments_set_parameter_changes_one_line(tmp_path):
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    with modify_yaml(copy) as data:
        data["train"]["epochs"] = 7  # what `dvc exp run -S train.epochs=7` does
    changed = [line for line in difflib.unified_diff((REPO / "params.yaml").read_text().splitlines(),
                                                     copy.read_text().splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(changed) == 2 and changed[0].startswith("-  epochs:") and changed[1].startswith("+  epochs: 7")
