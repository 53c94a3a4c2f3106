"""The package's import graph: no circle anywhere, layers in one direction, and the code lists of the
workflow (Snakemake `code=` inputs, DVC stage deps) equal to what the adapters really import."""

from __future__ import annotations

import ast
import modulefinder
from pathlib import Path

import yaml

from heatedasc.codedeps import closure, find_cycles, import_graph

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "heatedasc"


GRAPH = import_graph(PACKAGE)


def adapter_code(script: Path) -> set[str]:
    """The library modules (or subpackages) a workflow script runs, found by the standard library's ModuleFinder
    (not by heatedasc.codedeps, whose result dvc.yaml is made from), minus the job's bookkeeping."""
    from heatedasc.codedeps import NOT_CODE

    finder = modulefinder.ModuleFinder(path=[str(REPO / "src")], excludes=[
        "torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn", "soundfile", "torchaudio", "jinja2", "yaml",
        "tqdm", "markupsafe", "jsonschema", "threadpoolctl"])
    finder.run_script(str(script))
    return {m.split(".")[1] for m in finder.modules if m.startswith("heatedasc.")} - set(NOT_CODE)


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


def test_the_statement_walk_finds_every_import_a_full_walk_finds():
    """codedeps visits statements only (imports are statements); a full ast.walk of every file of the project, and of
    imports nested in every kind of block, finds the same ones."""
    from heatedasc.codedeps import _statements

    nested = (
        "import heatedasc.a\n"
        "class C:\n    import heatedasc.b\n    def m(self):\n        from heatedasc import c\n"
        "async def f():\n    async with x:\n        from heatedasc.d import y\n    async for i in z:\n"
        "        import heatedasc.e\n"
        "try:\n    pass\nexcept E:\n    import heatedasc.f\nelse:\n    import heatedasc.g\n"
        "finally:\n    import heatedasc.h\n"
        "try:\n    pass\nexcept* E:\n    import heatedasc.i\n"
        "match v:\n    case 1:\n        import heatedasc.j\n    case _:\n        if q:\n            pass\n"
        "        elif w:\n            from . import k\n        else:\n            while u:\n"
        "                for t in s:\n                    with m:\n                        import heatedasc.l\n"
    )
    sources = [nested] + [f.read_text() for top in ("src", "tests", "workflow", "benchmarks", "tools")
                          for f in sorted((REPO / top).rglob("*.py"))]
    for source in sources:
        tree = ast.parse(source)
        every = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        found = [n for n in _statements(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert sorted(map(ast.dump, found)) == sorted(map(ast.dump, every))
    assert len([n for n in _statements(ast.parse(nested)) if isinstance(n, (ast.Import, ast.ImportFrom))]) == 12


def subpackage_graph(package: str, sub: Path | None = None) -> dict[str, set[str]]:
    """module -> the modules of heatedasc.<package> (the folder `sub`, by default the package's own) it imports
    anywhere (module level, functions, TYPE_CHECKING)."""
    sub = sub or PACKAGE / package
    names = {p.stem for p in sub.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in names:
        found = set()
        for node in ast.walk(ast.parse((sub / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["heatedasc", package]:
                    found |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names if a.name.startswith(f"heatedasc.{package}.")}
        graph[name] = found - {name}
    return graph


def report_graph(sub: Path | None = None) -> dict[str, set[str]]:
    return subpackage_graph("report", sub)


def test_the_report_package_has_no_import_circle_and_its_context_is_the_leaf():
    graph = report_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import circles in src/heatedasc/report: " + "; ".join(" -> ".join(c) for c in cycles)
    assert graph["context"] == set()  # what renderers read imports no renderer, the registry or render
    renderers = renderer_modules()
    assert renderers <= graph["registry"]  # the registry lists every renderer, and the graph sees it do so
    for renderer in renderers:  # renderers know the context, never who lists or runs them
        assert not graph[renderer] & {"registry", "render"}, (renderer, graph[renderer])


def renderer_modules() -> set[str]:
    """The modules of heatedasc.report that hold a registered artefact's renderer or table document."""
    from heatedasc.report import REGISTRY

    functions = [f for a in REGISTRY for f in (a.render, *(t.document for t in a.tables))]
    assert all(f.__module__.startswith("heatedasc.report.") for f in functions)
    return {f.__module__.split(".")[2] for f in functions}


def test_the_report_circle_check_sees_a_renderer_that_imports_its_registry(tmp_path):
    """A renderer importing the registry back, even only for type checking, is the circle the check exists for."""
    import shutil

    sub = shutil.copytree(PACKAGE / "report", tmp_path / "report")
    for renderer in sorted(renderer_modules()):
        path = sub / f"{renderer}.py"
        source = path.read_text()
        path.write_text(source + "\nif TYPE_CHECKING:\n    from heatedasc.report.registry import Registry\n")
        cycles = find_cycles(report_graph(sub))
        assert any({renderer, "registry"} <= set(c) for c in cycles), (renderer, cycles)
        path.write_text(source)
    assert find_cycles(report_graph(sub)) == []


def test_the_train_package_has_no_import_circle_and_the_maths_knows_no_loop():
    graph = subpackage_graph("train")
    cycles = find_cycles(graph)
    assert not cycles, "import circles in src/heatedasc/train: " + "; ".join(" -> ".join(c) for c in cycles)
    assert graph["maths"] == set() and graph["inputs"] == set()  # the paper's maths and the input checks are leaves
    assert graph["checkpoint"] == set()  # what a checkpoint holds knows no loop, recipe or outputs
    assert "outputs" not in closure(graph, {"loop", "recipe"})  # writing the files comes after, never inside
    # device and compile policy is heatedasc.runtime's, which knows nothing of training
    assert "train" not in GRAPH["runtime"]


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
        "reliability_bins": "metrics", "ece_from_bins": "metrics", "pyplot": "plotting", "save_figure": "plotting",
    }
    for name, owner in owners.items():
        defined_in = set()
        for module in GRAPH:
            files = sorted((PACKAGE / module).rglob("*.py")) if (PACKAGE / module).is_dir() else [PACKAGE / f"{module}.py"]
            tree = ast.Module(body=[n for f in files for n in ast.parse(f.read_text()).body], type_ignores=[])
            for node in tree.body:
                targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                               if isinstance(t, ast.Name)]
                if name in targets:
                    defined_in.add(module)
        assert defined_in == {owner}, (name, sorted(defined_in))


# ------------------------------------------------------------------------------ workflow code lists
def test_dvc_yaml_is_generated_from_the_import_closure():
    from heatedasc import dvcstages

    assert (REPO / "dvc.yaml").read_text() == dvcstages.render(), "run `python -m heatedasc.dvcstages --write`"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    scripts = REPO / "workflow" / "scripts"
    for stage in dvcstages.STAGES:
        deps = {d for d in stages[stage.name]["deps"] if isinstance(d, str)}
        for script in stage.scripts:
            assert f"workflow/scripts/{script}.py" in deps
            for module in adapter_code(scripts / f"{script}.py"):
                assert f"src/heatedasc/{module}.py" in deps or f"src/heatedasc/{module}" in deps, (stage.name, module)
    # What a stage's scripts do not run is not its dependency: a report edit never makes the data stale.
    data_deps = set(stages["data"]["deps"])
    assert "src/heatedasc/report" not in data_deps and "src/heatedasc/train" not in data_deps
    assert "src/heatedasc/features.py" not in set(stages["train"]["deps"])


def test_each_scripts_code_is_what_the_standard_librarys_module_finder_finds():
    """The modules a job's digests cover (codedeps.script_modules, which parses only what the script reaches) are
    those ModuleFinder finds running the script's imports: no module missed, none added."""
    from heatedasc.codedeps import script_modules

    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(scripts) >= 9
    for script in scripts:
        assert script_modules(script) == adapter_code(script), script.name
