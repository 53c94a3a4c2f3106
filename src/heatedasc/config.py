"""The one configuration loader: merge the config files, validate them, cross-check keys.

Snakemake (the Snakefile), `heatedasc report`, `heatedasc lineage`, `heatedasc config` and DVC's `config`
stage all use it, so a configuration means the same everywhere:

* merge: later files win, nested mappings merge key by key, lists and scalars are replaced (Snakemake's
  `--configfile` semantics);
* validate: `workflow/schemas/config.schema.yaml` checks each key's type and range, and rejects unknown keys;
* cross-check: `check_consistency` ties keys to each other (a grid naming an unknown correction, ...), so a
  mistake stops at planning with the key's name instead of as a missing file deep in the DAG.
"""

from __future__ import annotations

import copy
import functools
import operator
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
PARAMS_FILE = "params.yaml"  # the paper configuration; its `pipeline.configfiles` names the default merge
# Sections no result depends on: speed-only settings, cluster resources, the pipeline's own file list. No record,
# DVC stage or report holds them, so changing one reruns nothing.
NOT_RESULT_SECTIONS = ("execution", "resources", "pipeline")


class ConfigError(ValueError):
    """A configuration problem; the message names the file or the key."""


def merge_into(base: dict, layer: Mapping) -> dict:
    """Merge `layer` into `base` in place (nested mappings merge, everything else is replaced)."""
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def default_configfiles(base: str | Path = ".") -> list[str]:
    """The config files of the pipeline's default run: `pipeline.configfiles` of params.yaml (what DVC runs)."""
    params = read_config_file(Path(base) / PARAMS_FILE)
    try:
        return str(params["pipeline"]["configfiles"]).split()
    except (KeyError, TypeError):
        raise ConfigError(f"{Path(base) / PARAMS_FILE}: lacks the key pipeline.configfiles") from None


def merge_config_files(configfiles: Sequence[str | Path]) -> dict:
    merged: dict = {}
    for f in configfiles:
        merge_into(merged, read_config_file(f))
    return merged


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict, "null": type(None),
    "string": str,
}


def coerce_to_schema(config: dict) -> dict:
    """Give command-line values their schema's type, in place: Snakemake reads `--config key=value` (nested ones
    included) as strings, so `--config 'train={"epochs": 3}'` would otherwise hold the text '3'. A string where the
    schema wants a number, a boolean or a list is read as YAML; anything that does not fit stays as it was (and the
    schema check names it)."""
    root = schema()

    def walk(value, node: Mapping):
        node = _resolve(node)
        types = node.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if isinstance(value, str) and types and "string" not in types:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            if any(isinstance(parsed, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(parsed, bool))
                   for t in types if t in _JSON_TYPES):
                value = parsed
        if isinstance(value, dict):
            props, extra = node.get("properties", {}), node.get("additionalProperties")
            for k in list(value):
                sub = props.get(k, extra if isinstance(extra, Mapping) else None)
                if sub is not None:
                    value[k] = walk(value[k], sub)
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            value[:] = [walk(v, node["items"]) for v in value]
        return value

    walk(config, root)
    return config


def check_schema(config: Mapping) -> None:
    """Raise ConfigError naming the first offending key (type, range, unknown or missing key)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        err = errors[0]
        where = ".".join(map(str, err.absolute_path)) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")


def check_consistency(config: Mapping) -> None:
    """Raise ConfigError naming the key when the grid or the report refer to something not configured."""
    references = config["correction"]["references"]
    known = sorted(references)
    devices = list(config["data"]["devices"])
    for name, refs in references.items():
        unknown = [d for d in refs if d not in devices]
        if unknown:
            raise ConfigError(f"correction.references.{name}: device(s) {unknown} are not in data.devices {devices}")

    def check(key: str, correction: str) -> None:
        if correction not in references:
            raise ConfigError(f"{key}: correction '{correction}' is not a key of correction.references {known}")

    for c in config["sweep"]["correction"]:
        check("sweep.correction", c)
    report = config["report"]
    for c in report.get("corrections") or {}:
        check(f"report.corrections.{c}", c)
    check("report.fig2_correction", report["fig2_correction"])
    for i, row in enumerate(report["table3_rows"]):
        check(f"report.table3_rows[{i}] ({row['name']})", row["correction"])
    for i, row in enumerate(report["confusion_runs"]):
        check(f"report.confusion_runs[{i}] ({row['name']})", row["correction"])
    for i, comp in enumerate(report["comparisons"]):
        for side in ("a", "b"):
            check(f"report.comparisons[{i}].{side} ({comp['name']})", comp[side]["correction"])


def validate_config(config: dict) -> None:
    """Types from the schema for command-line values, then the schema and cross-key checks: what every reader of
    the configuration runs."""
    coerce_to_schema(config)
    check_schema(config)
    check_consistency(config)


def load_config(configfiles: Sequence[str | Path] | None = None, base: str | Path = ".") -> dict:
    """Merge and validate `configfiles` (default: params.yaml's `pipeline.configfiles`, relative to `base`)."""
    files = list(configfiles) if configfiles else [Path(base) / f for f in default_configfiles(base)]
    config = merge_config_files(files)
    validate_config(config)
    return config


# ------------------------------------------------------------------- edits that a later file hides


def _leaves(tree: Mapping, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _covers(layer: Mapping, key: tuple) -> bool:
    """True when `layer` sets `key` or one of its parents to a non-mapping (replacing it)."""
    node: object = layer
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, Mapping):
            return True
    return True


def _committed_version(path: Path) -> dict | None:
    """The file as git's HEAD has it, or None outside a repository / for a file git does not track."""
    try:
        top = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=True).stdout.strip()
        rel = path.resolve().relative_to(Path(top).resolve()).as_posix()
        text = subprocess.run(["git", "-C", top, "show", f"HEAD:{rel}"], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def hidden_edits(configfiles: Sequence[str | Path]) -> list[str]:
    """Keys changed since the last commit in one config file but overridden by a later file: edits that
    cannot take effect (e.g. `dvc exp run -S params.yaml:train.epochs=20` while config/smoke.yaml sets it)."""
    files: list[Path] = []
    for f in map(Path, configfiles):  # a file given twice counts where it comes last (its later merge wins)
        files = [g for g in files if g.resolve() != f.resolve()] + [f]
    layers = [read_config_file(f) for f in files]
    problems = []
    for i, (path, layer) in enumerate(zip(files, layers)):
        later = [(files[j], layers[j]) for j in range(i + 1, len(files))]
        if not later:
            continue
        committed = _committed_version(path)
        if committed is None:
            continue
        before, now = _leaves(committed), _leaves(layer)
        for key in sorted(set(before) | set(now), key=str):
            if before.get(key, "<absent>") == now.get(key, "<absent>"):
                continue
            winner = next((p for p, lay in reversed(later) if _covers(lay, key)), None)
            if winner is not None:
                dotted = ".".join(map(str, key))
                problems.append(
                    f"{path}: {dotted} changed since the last commit ({before.get(key, '<absent>')!r} -> "
                    f"{now.get(key, '<absent>')!r}), but {winner}, merged after it, sets {dotted} too, so the change "
                    f"has no effect; set it in {winner} instead (dvc exp run -S '{winner}:{dotted}=...')"
                )
    return problems


def check_hidden_edits(configfiles: Sequence[str | Path]) -> None:
    problems = hidden_edits(configfiles)
    if problems:
        raise ConfigError("\n".join(problems))


def dump_config(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None, width=100)


def write_effective_config(configfiles: Sequence[str | Path], out: str | Path) -> dict:
    """Validate, refuse hidden edits, and write the merged configuration (DVC's record of what runs)."""
    from heatedasc.fileio import write_text

    config = load_config(configfiles)
    check_hidden_edits(configfiles)
    header = ("# The configuration the pipeline runs with: " + " + ".join(map(str, configfiles)) +
              " merged (written by `heatedasc config`; edit those files, not this one).\n")
    write_text(out, header + dump_config(config))
    return config




def _resolve(node: Mapping) -> Mapping:
    """A schema node with its `$ref`s (to the schema's `definitions`) followed."""
    while "$ref" in node:
        node = schema()["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def schema_node(dotted: str) -> dict:
    """The schema of one section or key, `$ref`s resolved: schema_node("train.selection")["enum"]. The code reads
    enums and required keys from here instead of repeating them."""
    node: Mapping = schema()
    for part in dotted.split("."):
        properties = _resolve(node).get("properties", {})
        if part not in properties:
            raise KeyError(f"{SCHEMA_PATH}: no key {dotted}")
        node = properties[part]
    return dict(_resolve(node))


_BOUNDS = {"minimum": (">=", operator.ge), "exclusiveMinimum": (">", operator.gt),
           "maximum": ("<=", operator.le), "exclusiveMaximum": ("<", operator.lt)}
_CHECKED = {"type", "enum", *_BOUNDS}  # the keywords check_section understands (what the schema's scalars use)


def _is_type(value, name: str) -> bool:
    return isinstance(value, _JSON_TYPES[name]) and not (name in ("integer", "number") and isinstance(value, bool))


def _value_problem(value, rule: Mapping) -> str | None:
    """Why `value` breaks the scalar schema `rule` (type, enum, bounds), or None."""
    types = rule.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if types and not any(_is_type(value, t) for t in types):
        if types == ["boolean"]:
            return f"must be true or false, got {value!r}"
        return f"must be of type {' or '.join(types)}, got {value!r}"
    if "enum" in rule and value not in rule["enum"]:
        return f"must be one of {tuple(rule['enum'])}, got {value!r}"
    for keyword, (sign, holds) in _BOUNDS.items():
        if keyword in rule and not holds(value, rule[keyword]):
            return f"must be {sign} {rule[keyword]}, got {value!r}"
    return None


def check_section(values: Mapping, section: str, *, what: str) -> dict:
    """The keys the schema requires of `section` (e.g. "execution.train"), taken from `values`, each checked against
    its schema (type, enum, bounds); other keys are left out. For code handed a section directly rather than through
    load_config, and without jsonschema (the GPU machines training runs on may lack it). ConfigError names the key:
    `train.epochs is missing from <what>`, `train.selection must be one of ('test', 'holdout', 'last'), got 'best'`,
    `execution.train.compile must be true or false, got 'yes'`, `train.epochs must be >= 1, got 0`."""
    node = schema_node(section)
    out = {}
    for key in node["required"]:
        if key not in values:
            raise ConfigError(f"{section}.{key} is missing from {what}")
        rule = _resolve(node["properties"][key])
        unchecked = set(rule) - _CHECKED - {"description", "default"}
        if unchecked:
            raise ConfigError(f"{SCHEMA_PATH}: {section}.{key} uses {sorted(unchecked)}, which check_section cannot check")
        problem = _value_problem(values[key], rule)
        if problem:
            raise ConfigError(f"{section}.{key} {problem}")
        out[key] = values[key]
    return out
