"""The install tells the truth: the Python floor is the one the pinned lock needs, every package the code
imports is declared, every declared package is pinned, and environment.yml installs the same lock."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib

import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = {
    re.sub(r"[-_.]+", "-", name).lower(): version
    for name, version in (
        line.strip().split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
}
CANDIDATES = [Version(f"3.{minor}") for minor in range(8, 16)]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("heatedasc")]
    return {norm(r.name): r for r in reqs}


def floor(spec: str) -> Version:
    return next(v for v in CANDIDATES if v in SpecifierSet(spec))


def test_python_floor_is_the_one_the_lock_needs():
    needs = {}
    for name in LOCK:
        requires = md.metadata(name).get("Requires-Python")
        if requires:
            needs[name] = floor(requires)
    lock_floor = max(needs.values())
    ours = floor(PYPROJECT["project"]["requires-python"])
    assert ours == lock_floor, (
        f"pyproject says Python >= {ours}, but the lock needs >= {lock_floor} "
        f"({sorted(n for n, v in needs.items() if v == lock_floor)[:5]})"
    )
    assert sys.version_info[:2] >= (ours.major, ours.minor)
    assert f"Python ≥ {ours}" in (REPO / "README.md").read_text()
    assert f"{PYTHON_CHECK}{ours.minor})" in (REPO / "Makefile").read_text()


PYTHON_CHECK = "sys.version_info >= (3, "


def imported_distributions(folders) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere (module level or inside functions) -> files."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted(p for ext in ("*.py", "*.smk") for p in (REPO / folder).rglob(ext)):
            source = path.read_text()
            if path.suffix == ".smk":  # Snakemake syntax: only its import lines are Python
                source = "\n".join(l for l in source.splitlines() if l.startswith(("import ", "from ")))
            for node in ast.walk(ast.parse(source)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if (path.parent / f"{top}.py").is_file():  # a script's sibling module (benchmarks/), not a package
                        continue
                    if top not in stdlib and top not in ("heatedasc", "snakemake_logger_plugin_heatedasc", "snakemake",
                                                         "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
                    elif top == "snakemake":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared_and_pinned():
    by_module = md.packages_distributions()
    deps = declared()
    missing = {}
    for module, files in imported_distributions(["src", "workflow", "benchmarks"]).items():
        dists = {norm(d) for d in by_module.get(module, [])}
        if not dists & set(deps):
            missing[module] = sorted(files)[:3]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    for name, req in deps.items():
        assert name in LOCK, f"{name} is declared but not pinned in requirements.lock"
        assert Version(LOCK[name]) in req.specifier, f"requirements.lock pins {name}=={LOCK[name]}, outside {req}"


def test_environment_yml_installs_the_lock_with_the_same_python():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Version(python.split("=", 1)[1]) == floor(PYPROJECT["project"]["requires-python"])
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r requirements.lock", "-e ."]
