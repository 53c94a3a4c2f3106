"""Which library code a workflow job runs: the import closure of its adapter script, read with `ast`.

Imports at module level, inside functions and relative ones all count, so a lazily imported module is
still a dependency. The closure is what a job's results depend on: the workflow reruns a job when one of
these files changes, `heatedasc lineage` names the file, and `tests/test_layout.py` checks the graph has no
circle. Job logging and provenance records are excluded: they describe results, they do not make them.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

PACKAGE = "heatedasc"
PACKAGE_DIR = Path(__file__).resolve().parent
# Bookkeeping around a job (its log, its record, the run-time checks of the workflow): describes results, never makes them.
# pinning sets the CPU kernels and threads: what it sets is in every record's `cpu` entry (heatedasc.pinning.recorded),
# so a change of what it pins reruns the jobs through that entry, not through the code's digest.
NOT_CODE = frozenset({"logutil", "provenance", "hashing", "job", "currency", "codedeps", "pinning"})


def package_imports(source: str, modules: set[str], package: str = PACKAGE) -> set[str]:
    """Modules of ``package`` that ``source`` imports anywhere: at module level, in functions, in branches."""
    return set(_imported_names(source, package) & modules)


def _statements(tree: ast.AST) -> Iterator[ast.AST]:
    """Every statement of a parsed file, however deeply nested (function and class bodies, branches, handlers,
    match cases). An import is a statement, so this finds every import `ast.walk` would, without visiting the
    expressions that make up most of a file's nodes."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                todo.extend(v for v in value if isinstance(v, (ast.stmt, ast.excepthandler, ast.match_case)))


@lru_cache(maxsize=512)
def _imported_names(source: str, package: str) -> frozenset[str]:
    """The names ``source`` imports from ``package``: `import package.x` and `from package.x import ...` give x,
    `from package import x, y` gives x and y (package_imports keeps those that are modules). Memoised on the text
    itself: one process (the Snakemake planner) asks for the same files once per workflow script."""
    found = set()
    for node in _statements(ast.parse(source)):
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
                found |= {alias.name for alias in node.names}
    return frozenset(found)


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Top-level modules and sub-packages of a package folder: name -> file (a sub-package's __init__.py
    stands for the whole sub-package, whose files are added by `module_files`)."""
    found = {p.stem: p for p in sorted(package_dir.glob("*.py")) if p.stem != "__init__"}
    for sub in sorted(package_dir.iterdir()):
        if sub.is_dir() and (sub / "__init__.py").is_file():
            found[sub.name] = sub / "__init__.py"
    return found


def module_files(package_dir: Path, name: str) -> list[Path]:
    """Every source file of a top-level module or sub-package."""
    sub = package_dir / name
    if sub.is_dir():
        return sorted(sub.rglob("*.py"))
    return [package_dir / f"{name}.py"]


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """module -> the package's top-level modules it imports (a sub-package counts as one module)."""
    modules = set(package_modules(package_dir))
    return {name: module_imports(package_dir, name, modules) for name in modules}


def module_imports(package_dir: Path, name: str, modules: set[str]) -> set[str]:
    """The package's top-level modules (of ``modules``) that module or sub-package ``name`` imports: its edges in
    import_graph."""
    source = "\n".join(f.read_text() for f in module_files(package_dir, name))
    return package_imports(source, modules, package_dir.name) - {name}


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
    return reachable(roots, lambda m: graph.get(m, ()))


def reachable(roots: Iterable[str], edges: Callable[[str], Iterable[str]]) -> set[str]:
    """``roots`` and every node reached from them; ``edges`` is asked once per node reached, so it may compute them."""
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges(m))
    return seen


def script_modules(script: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The library modules a workflow script runs: its imports and theirs, minus logging/provenance.

    The closure over import_graph's edges, walked from the script's imports: only the modules it reaches are read
    and parsed (each job computes its own digests, and most jobs reach a fifth of the package)."""
    modules = set(package_modules(package_dir))
    direct = package_imports(Path(script).read_text(), modules, package_dir.name) - NOT_CODE
    return reachable(direct, lambda m: module_imports(package_dir, m, modules)) - NOT_CODE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_key(path: Path) -> str:
    """A library file's portable name: relative to the folder holding the package (`heatedasc/losses.py`), so the
    same code gives the same name in any clone, installed or editable."""
    return path.resolve().relative_to(PACKAGE_DIR.parent).as_posix()


@lru_cache(maxsize=None)
def code_digests(script: str) -> dict[str, str]:
    """{portable name: sha256} of a workflow script (named `workflow/scripts/<file>`, its place in any clone) and of
    every library file it runs (memoised per process)."""
    script_path = Path(script).resolve()
    digests = {f"{script_path.parent.parent.name}/{script_path.parent.name}/{script_path.name}": _sha256(script_path)}
    for name in sorted(script_modules(script_path)):
        for f in module_files(PACKAGE_DIR, name):
            digests[package_key(f)] = _sha256(f)
    return digests


@lru_cache(maxsize=None)
def module_closure_digest(*modules: str) -> str:
    """One SHA-256 over `modules` and everything they import (the same import closure the workflow records):
    what a resumable computation keys its partial results on, so another version of the code never resumes them."""
    graph = import_graph()
    h = hashlib.sha256()
    for name in sorted(closure(graph, set(modules)) - NOT_CODE):
        for f in module_files(PACKAGE_DIR, name):
            h.update(package_key(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
