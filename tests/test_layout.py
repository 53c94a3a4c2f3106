"""The package's import graph: no circle anywhere, layers in one direction, and the code lists of the
workflow (Snakemake `code=` inputs, DVC stage deps) equal to what the adapters really import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "heatedasc"
# Job logging and provenance records: adapters import them to write the log and the record, not the results.
NOT_CODE = {"logutil", "provenance"}


def heatedasc_imports(source: str, modules: set[str], package: str = "heatedasc") -> set[str]:
    """Modules of ``package`` that ``source`` imports anywhere: at module level, in functions, in branches."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level:  # relative import inside the package
                parts = [package] + [p for p in parts if p]
            if parts[0] != package:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from heatedasc import x, y
                found |= {alias.name for alias in node.names if alias.name in modules}
    return found & modules


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (every *.py file of the package folder)."""
    files = {p.stem: p for p in sorted(package_dir.glob("*.py")) if p.stem != "__init__"}
    return {name: heatedasc_imports(path.read_text(), set(files), package_dir.name) - {name}
            for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle met by a depth-first walk, each as [a, b, ..., a]."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def closure(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    """``roots`` and everything they import, directly or not."""
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


GRAPH = import_graph(PACKAGE)


def adapter_code(script: Path) -> set[str]:
    """The library modules a workflow script runs: its heatedasc imports and theirs, minus logging/provenance."""
    return closure(GRAPH, heatedasc_imports(script.read_text(), set(GRAPH)) - NOT_CODE) - NOT_CODE


# ------------------------------------------------------------------------------------------- circles
def test_the_package_has_no_import_circle():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import circles in src/heatedasc: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_imports_and_names_the_circle(tmp_path):
    pkg = tmp_path / "heatedasc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from heatedasc.high import g\n    return g\n")
    (pkg / "high.py").write_text("from heatedasc import low\nimport heatedasc.leaf as leaf\n")
    (pkg / "leaf.py").write_text("from .low import f  # a relative import counts too\n")
    graph = import_graph(pkg)
    assert graph == {"high": {"low", "leaf"}, "leaf": {"low"}, "low": {"high"}}
    assert find_cycles(graph) == [["high", "leaf", "low", "high"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


# -------------------------------------------------------------------------------------------- layers
def test_primitives_sit_below_their_users():
    # The STFT and the filterbank know nothing of the package; the correction never needs the features.
    assert GRAPH["dsp"] == set()
    assert "features" not in closure(GRAPH, {"correction"})
    # Training reads caches without pulling in audio reading, the STFT or the correction.
    assert closure(GRAPH, {"train"}).isdisjoint({"features", "feature_stats", "dsp", "audio", "correction"})
    assert GRAPH["feature_cache"] == {"fileio"}


def test_each_constant_and_helper_has_one_home():
    owners = {
        "DEVICES": "tau", "SCENES": "tau", "INDEX_COLUMNS": "feature_cache", "ECE_BINS": "metrics",
        "load_feature_cache": "feature_cache", "FeatureCache": "feature_cache", "sha256_file": "fileio",
        "expected_calibration_error": "metrics", "device_accuracies": "metrics", "stft_magnitude": "dsp",
        "mel_filterbank": "dsp", "read_wave": "audio", "read_manifest": "tau", "RunningMeanStd": "feature_stats",
    }
    # provenance.py (its own cached sha256_file) and the report modules are being rewritten elsewhere.
    skip = {"provenance", "report", "report_extras", "report_render", "report_html"}
    for name, owner in owners.items():
        defined_in = set()
        for module in set(GRAPH) - skip:
            tree = ast.parse((PACKAGE / f"{module}.py").read_text())
            for node in tree.body:
                targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                               if isinstance(t, ast.Name)]
                if name in targets:
                    defined_in.add(module)
        assert defined_in == {owner}, (name, sorted(defined_in))


# ------------------------------------------------------------------------------ workflow code lists
def smk_rules(smk: Path) -> dict[str, tuple[set[str], Path]]:
    """rule -> (modules of its `code=` input, its script) for the rules of one .smk file that have both."""
    text = smk.read_text()
    constants = {name: [a.strip().strip('"') for a in args.split(",") if a.strip()]
                 for name, args in re.findall(r"^(\w+) = src_files\(([^)]*)\)", text, flags=re.M | re.S)}
    env = {"src_files": lambda *modules: list(modules), **constants}
    rules = {}
    for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.M | re.S):
        code = re.search(r"^\s+code=(.+?),?$", body, flags=re.M)
        script = re.search(r'^\s+script:\s*\n\s+"([^"]+)"', body, flags=re.M)
        if code and script:
            rules[name] = (set(eval(code[1], env)), (smk.parent / script[1]).resolve())
    return rules


CHECKED_SMK = ("coefficients.smk", "features.smk", "train.smk")  # data.smk and report.smk can join when ready


@pytest.mark.parametrize("smk", CHECKED_SMK)
def test_rule_code_inputs_are_exactly_what_the_adapter_imports(smk):
    rules = smk_rules(REPO / "workflow" / "rules" / smk)
    assert rules, f"no rule with code= and script: found in {smk}"
    for rule, (listed, script) in rules.items():
        needed = adapter_code(script)
        assert listed == needed, (
            f"rule {rule}: code= lists {sorted(listed)} but {script.name} runs {sorted(needed)} "
            f"(missing {sorted(needed - listed)}, not imported {sorted(listed - needed)})"
        )


def test_the_smk_parser_reads_constants_and_inline_lists(tmp_path):
    smk = tmp_path / "x.smk"
    smk.write_text('A = src_files(\n    "dsp", "audio"\n)\n\n\nrule one:\n    input:\n        code=A,\n    script:\n'
                   '        "s.py"\n\n\nrule two:\n    input:\n        code=src_files("tau"),\n    script:\n'
                   '        "s.py"\n')
    script = (tmp_path / "s.py").resolve()
    assert smk_rules(smk) == {"one": ({"dsp", "audio"}, script), "two": ({"tau"}, script)}


def test_dvc_stages_depend_on_every_module_their_rules_run():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    scripts = REPO / "workflow" / "scripts"
    by_stage = {
        "data": ["prepare", "mean_spectra", "coefficients", "coefficient_plot", "feature_stats", "features"],
        "train": ["train"],
    }
    for stage, adapters in by_stage.items():
        needed = set().union(*(adapter_code(scripts / f"{a}.py") for a in adapters))
        deps = {d for d in stages[stage]["deps"] if isinstance(d, str)}
        missing = sorted(m for m in needed if f"src/heatedasc/{m}.py" not in deps)
        assert not missing, f"dvc.yaml stage {stage} lacks deps on src/heatedasc/{{{', '.join(missing)}}}.py"
