"""Job recipes: Snakemake decides what to rerun by content, as DVC does, never by file dates.

A job's *recipe* is what determines its outputs: its rule and wildcards, its params, the code it runs (the
adapter script and its library import closure, by content hash), the content of every input no rule
produces (raw data: meta.csv, fold lists, audio) and the fingerprints of the jobs that produce its other
inputs. The fingerprint is the SHA-256 of the recipe; each job records it in its provenance record.

At planning (`snakemake`, `snakemake -n`, inside `dvc repro`) every job compares the fingerprint of its
recipe now with the recorded one and checks that its outputs still hold the content it recorded. If both
match, the job is up to date, whatever the files' modification times say — so `dvc pull`, `dvc checkout`,
`dvc exp apply` or a `git checkout` that restores files with fresh dates makes nothing rerun. If either
differs, the job gets one extra input, a token file under `.snakemake/heatedasc/changed/` written at that
moment (so newer than the job's outputs), and Snakemake reruns it; through the chained fingerprints
everything downstream follows. Every other input is `ancient()` (file dates never count), and the profile
turns Snakemake's params/code/input triggers off (`rerun-triggers`), because they disagree with DVC after a
checkout. Each decision is written to `.snakemake/heatedasc/recipes/` as JSON (`heatedasc lineage` reads it
to say exactly what changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from heatedasc.codedeps import code_digests

STATE_DIR = Path(".snakemake") / "heatedasc"
RECIPE_DIR = STATE_DIR / "recipes"
TOKEN_DIR = STATE_DIR / "changed"
PROVENANCE_OUTPUT = "provenance"  # the output name of a job's provenance record in every recipe rule


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"not JSON serialisable in a recipe: {type(o).__name__}")


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def job_key(rule: str, wildcards: Mapping[str, Any]) -> str:
    """A readable job name: rule(k=v, ...)."""
    return f"{rule}({', '.join(f'{k}={v}' for k, v in wildcards.items())})" if wildcards else rule


def _safe(wildcards: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in wildcards.items()).replace("/", "_") or "_"


def content_digest(path: str | os.PathLike) -> str:
    """Content hash of a file or a folder tree (memoised by size, mtime and inode), or 'missing'."""
    from heatedasc.provenance import sha256_path

    return sha256_path(path) if os.path.exists(path) else "missing"


def recorded(record_path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(record_path).read_text())
    except (OSError, ValueError):
        return None


def outputs_changed(record: Mapping) -> list[str]:
    """Outputs whose content differs from what the job recorded when it wrote them (edited, replaced)."""
    changed = []
    for paths in record.get("outputs", {}).values():
        for path, sha in paths.items():
            if not os.path.exists(path) or content_digest(path) != sha:
                changed.append(path)
    return changed


def diff_recipes(before: Mapping | None, now: Mapping) -> list[str]:
    """What differs between two recipes, one line each (params by key, code and sources by file)."""
    if not before:
        return ["no recorded recipe (outputs from an older version, or never run)"]
    out = []

    def walk(prefix: str, a, b):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(f"{prefix}.{k}" if prefix else str(k), a.get(k), b.get(k))
        elif canonical(a) != canonical(b):
            out.append(f"{prefix}: {_short(a)} -> {_short(b)}")

    for section, label in (("params", "params"), ("code", "code"), ("sources", "input"), ("upstream", "upstream")):
        a, b = before.get(section) or {}, now.get(section) or {}
        if section == "params":
            walk("params", a, b)
            continue
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                state = "new" if k not in a else "gone" if k not in b else "changed"
                out.append(f"{label} {k} {state}")
    return out


def _short(v) -> str:
    text = canonical(v) if v is not None else "absent"
    return text if len(text) <= 60 else text[:57] + "..."


class RecipeBook:
    """Computes and checks job recipes for one Snakemake workflow (used from workflow/rules/common.smk)."""

    def __init__(self, workflow, root: str | os.PathLike, *, main_process: bool):
        self.workflow = workflow
        self.root = Path(root).resolve()
        self.main_process = main_process
        self._fingerprints: dict[tuple, str] = {}
        self._recipes: dict[tuple, dict] = {}
        self._producers: dict[str, tuple | None] = {}
        self._tokens: dict[tuple, list[str]] = {}

    # ----------------------------------------------------------------------------- Snakemake glue
    def _rule(self, name: str):
        return self.workflow.get_rule(name)

    def _eval(self, value, wildcards: Mapping) -> Any:
        from snakemake.io import Wildcards, is_callable

        if is_callable(value):
            func = getattr(value, "callable", None) or getattr(getattr(value, "_file", None), "callable", None) or value
            return func(Wildcards(fromdict=dict(wildcards)))  # what Snakemake hands input/params functions
        return value

    def _resolved_inputs(self, rule, wildcards: Mapping) -> list[str]:
        from snakemake.io import apply_wildcards

        paths: list[str] = []

        def add(item):
            if isinstance(item, Mapping):
                for v in item.values():
                    add(v)
            elif isinstance(item, (list, tuple)):
                for v in item:
                    add(v)
            elif item is not None:
                paths.append(apply_wildcards(str(item), wildcards))

        from snakemake.io import Wildcards

        for item in rule.input:
            func = getattr(item, "callable", None) or item
            if getattr(func, "is_recipe_token", False):
                continue
            if hasattr(func, "paths"):  # a dependency input (dependency_input): its paths, not its decision
                add(func.paths(Wildcards(fromdict=dict(wildcards))))
                continue
            add(self._eval(item, wildcards))
        return paths

    def _producer(self, path: str) -> tuple | None:
        if path not in self._producers:
            found = None
            for rule in self.workflow.rules:
                if rule.output and not getattr(rule, "norun", False) and rule.is_producer(path):
                    found = (rule.name, tuple(rule.get_wildcards(path).items()))
                    break
            self._producers[path] = found
        return self._producers[path]

    def _script(self, rule) -> str | None:
        if not rule.script:
            return None
        base = rule.basedir.get_path_or_uri(secret_free=True) if hasattr(rule.basedir, "get_path_or_uri") else rule.basedir
        return os.path.normpath(os.path.join(str(base), rule.script))

    def record_path(self, name: str, wildcards: Mapping) -> str:
        from snakemake.io import apply_wildcards

        rule = self._rule(name)
        return apply_wildcards(str(rule.output.get(PROVENANCE_OUTPUT)), wildcards)

    # -------------------------------------------------------------------------------- the recipe
    def recipe(self, name: str, wildcards: Mapping) -> dict:
        wildcards = {k: str(v) for k, v in dict(wildcards).items()}
        key = (name, tuple(sorted(wildcards.items())))
        if key in self._recipes:
            return self._recipes[key]
        if not self.main_process:
            planned = self._planned(name, wildcards)
            if planned is not None:  # a cluster job: the recipe the main process planned (shared file system)
                self._recipes[key] = planned
                return planned
        rule = self._rule(name)
        params = {k: self._eval(v, wildcards) for k, v in rule.params.items() if k != "recipe"}
        params["cpu"] = self.workflow.config.get("cpu")  # every job's kernels and threads (heatedasc.pinning)
        sources, upstream = {}, {}
        for path in self._resolved_inputs(rule, wildcards):
            producer = self._producer(path)
            if producer is None:
                sources[self._rel(path)] = content_digest(path)
            elif producer[0] != name or dict(producer[1]) != wildcards:  # (a rule never consumes itself)
                upstream[job_key(producer[0], dict(producer[1]))] = self.fingerprint(producer[0], dict(producer[1]))
        script = self._script(rule)
        recipe = {
            "rule": name,
            "wildcards": wildcards,
            "params": json.loads(canonical(params)),
            "code": code_digests(script, str(self.root)) if script else {},
            "sources": sources,
            "upstream": upstream,
        }
        recipe["fingerprint"] = digest(recipe)
        self._recipes[key] = recipe
        self._fingerprints[key] = recipe["fingerprint"]
        return recipe

    def _planned(self, name: str, wildcards: Mapping) -> dict | None:
        try:
            decision = json.loads((RECIPE_DIR / name / f"{_safe(wildcards)}.json").read_text())
        except (OSError, ValueError):
            return None
        return decision.get("recipe")

    def fingerprint(self, name: str, wildcards: Mapping) -> str:
        return self.recipe(name, wildcards)["fingerprint"]

    def _rel(self, path: str) -> str:
        p = Path(path).resolve()
        try:
            return p.relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            return str(p)

    # -------------------------------------------------------------------------- the decision
    def input_path(self, path: str, consumer: tuple[str, Mapping], ancient: Callable[[str], Any]):
        """`path` as an input of the job `consumer` (rule, wildcards): plain when that job or the one that
        makes `path` reruns in this plan, else ancient(path), so that dates restored by DVC or touched by
        hand never count. (Snakemake masks every job below a rerunning one and reaches it again only
        through links that are not ancient: a rerunning consumer must see its links plain.)"""
        producer = self._producer(path)
        if self.token(consumer[0], consumer[1]) or (producer is not None and self.token(producer[0], dict(producer[1]))):
            return path
        return ancient(path)

    def _outputs(self, name: str, wildcards: Mapping) -> list[str]:
        from snakemake.io import apply_wildcards

        return [apply_wildcards(str(o), wildcards) for o in self._rule(name).output]

    def token(self, name: str, wildcards: Mapping) -> list[str]:
        """[] when the job is up to date by content, else the token that makes Snakemake rerun it."""
        wildcards = {k: str(v) for k, v in dict(wildcards).items()}
        key = (name, tuple(sorted(wildcards.items())))
        if key not in self._tokens:
            self._tokens[key] = self._decide(name, wildcards)
        return self._tokens[key]

    def _decide(self, name: str, wildcards: dict) -> list[str]:
        folder = TOKEN_DIR / name / _safe(wildcards)
        recipe = self.recipe(name, wildcards)
        token = folder / recipe["fingerprint"][:16]
        if not self.main_process:
            # A cluster job re-plans only itself: the main process already decided; keep its token.
            return [str(token)] if token.exists() else []
        record_path = self.record_path(name, wildcards)
        record = recorded(record_path) if os.path.exists(record_path) else None
        existing = [p for p in self._outputs(name, wildcards) if os.path.exists(p)]
        if record is None:
            reasons = ["no provenance record beside the outputs (made by other code?)"] if existing else []
        elif record.get("fingerprint") != recipe["fingerprint"]:
            reasons = diff_recipes(record.get("recipe"), recipe) or ["recipe changed"]
        else:
            reasons = [f"output {p} changed since the job wrote it" for p in outputs_changed(record)]
        decision = {
            "job": job_key(name, wildcards),
            "fingerprint": recipe["fingerprint"],
            "recorded": (record or {}).get("fingerprint"),
            "outputs_exist": bool(existing),
            "changed": reasons,
            "recipe": recipe,
        }
        _write_if_changed(RECIPE_DIR / name / f"{_safe(wildcards)}.json", json.dumps(decision, indent=1) + "\n")
        if not reasons:
            return []
        # Snakemake reruns a job whose input is newer than its outputs: the token, written now (and never
        # older than an output dated in the future), is. Its text is new each time, because Snakemake
        # also ignores a newer input whose checksum it has seen before.
        token.parent.mkdir(parents=True, exist_ok=True)
        tmp = token.with_name(f".{token.name}.{os.getpid()}.tmp")
        tmp.write_text(f"planned {time.time_ns()}\n" + "\n".join(reasons) + "\n")
        newest = max((os.stat(p).st_mtime for p in existing), default=0.0)
        stamp = max(time.time(), newest + 1.0)
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, token)
        return [str(token)]


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def dependency_input(book_getter: Callable[[], RecipeBook], rule: str, item):
    """The input function for one named input of `rule` (a path pattern, a list of them): each path plain
    or ancient as RecipeBook.input_path decides. `.paths(wildcards)` gives the bare paths."""
    from snakemake.io import ancient, apply_wildcards

    def paths(wildcards):
        values = dict(wildcards.items())
        resolved = [apply_wildcards(str(p), values) for p in ([item] if isinstance(item, str) else item)]
        return resolved[0] if isinstance(item, str) else resolved

    def resolve(wildcards):
        consumer = (rule, {k: str(v) for k, v in wildcards.items()})
        chosen = paths(wildcards)
        book = book_getter()
        if isinstance(chosen, str):
            return book.input_path(chosen, consumer, ancient)
        return [book.input_path(p, consumer, ancient) for p in chosen]

    resolve.paths = paths
    return resolve


def token_input(book_getter: Callable[[], RecipeBook], name: str):
    """The input function a rule lists as `recipe=`: [] or the token that reruns the job."""

    def token(wildcards):
        return book_getter().token(name, wildcards)

    token.is_recipe_token = True
    return token


def recipe_param(book_getter: Callable[[], RecipeBook], name: str):
    """The params function a rule lists as `recipe=`: the recipe, recorded by provenance.record_job."""

    def recipe(wildcards):
        return book_getter().recipe(name, wildcards)

    return recipe

