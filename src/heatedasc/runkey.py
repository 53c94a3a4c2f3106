"""The run key: which training run a directory holds, as named sweep axes. A leaf module (standard library only).

One training run per point of the grid `sweep:` configures; `RunLayout` is that grid and owns everything about
it that used to be spelt out in several places: the sweep (the product over the axes), the run folder's path
pattern, its glob, the parse of a folder back into named axes and the Snakemake wildcard constraints. The
Snakefile (common.smk, train.smk), training (heatedasc.train) and the report (heatedasc.report.runs) all use it.

The four axes of the paper keep the layout results have always had, `runs/{correction}/T{temperature}/{loss}/
seed{seed}` (T formatted 1.0 -> '1'); any further axis configured under `sweep:` adds one folder level
`{name}={value}` below them, in config order, so a run folder reads back into named axes without the config.
Adding an axis takes params.yaml (its values), one line declaring it in the schema's `sweep:`, and the code that
uses its value; nothing here.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Mapping, Sequence

RUNS_DIR = "runs"  # the run folders' parent, under the results folder


def format_temperature(t: Any) -> str:
    """1.0 -> '1', 2.5 -> '2.5': the T{temperature} path component."""
    t = float(t)
    return str(int(t)) if t.is_integer() else repr(t)


def format_value(value: Any) -> str:
    """An axis value as a path component: integral floats without '.0' (1.0 -> '1'), everything else as str."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format_temperature(value)
    return str(value)


def parse_value(text: str) -> Any:
    """A path component back into a value: int, float, or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Axis:
    """One sweep axis: how its value becomes a folder name and back."""

    name: str
    prefix: str = ""  # the folder name is prefix + formatted value
    pattern: str | None = None  # regex of a formatted value; None: exactly the configured values
    format: Callable[[Any], str] = format_value
    parse: Callable[[str], Any] = parse_value

    def folder(self, value: Any) -> str:
        return self.prefix + self.format(value)

    def wildcard(self) -> str:
        return self.prefix + "{" + self.name + "}"


# The paper's axes, first and in this order, in the layout results have always had.
CORE_AXES: tuple[Axis, ...] = (
    Axis("correction", pattern=None, parse=str),  # constrained to the configured corrections (from_config)
    Axis("temperature", prefix="T", pattern=r"[0-9]+(\.[0-9]+)?", format=format_temperature, parse=float),
    Axis("loss", pattern="focal|ce", parse=str),
    Axis("seed", prefix="seed", pattern=r"[0-9]+", format=lambda s: str(int(s)), parse=int),
)
CORE_NAMES = tuple(a.name for a in CORE_AXES)


def extra_axis(name: str) -> Axis:
    """A configured axis beyond the paper's four: one `{name}={value}` folder level."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"sweep.{name}: an axis name must be an identifier (letters, digits, '_')")
    return Axis(name, prefix=f"{name}=")


@dataclass(frozen=True)
class RunKey:
    """One run: its axis values by name, formatted as in its path (temperature '1', seed '0', ...)."""

    axes: tuple[tuple[str, str], ...]

    def __getitem__(self, name: str) -> str:
        for k, v in self.axes:
            if k == name:
                return v
        raise KeyError(f"run {self.relative()} has no axis {name!r}")

    @property
    def wildcards(self) -> dict[str, str]:
        """{axis: formatted value}: Snakemake's wildcards of the run's files."""
        return dict(self.axes)

    def values(self) -> dict[str, Any]:
        """{axis: value}, typed (temperature float, seed int, ...)."""
        axes = {a.name: a for a in CORE_AXES}
        return {k: (axes[k].parse if k in axes else parse_value)(v) for k, v in self.axes}

    def relative(self) -> str:
        """The run folder below runs/: ref_abc/T1/focal/seed0[/name=value...]."""
        return "/".join(_axis(k).folder(v) if k in CORE_NAMES else f"{k}={v}" for k, v in self.axes)


def _axis(name: str) -> Axis:
    return next((a for a in CORE_AXES if a.name == name), None) or extra_axis(name)


class RunLayout:
    """The configured grid: its axes (the paper's four, then any others in config order) and their values."""

    def __init__(self, values: Mapping[str, Sequence[Any]], corrections: Sequence[str] | None = None):
        missing = [n for n in CORE_NAMES if n not in values]
        if missing:
            raise ValueError(f"sweep: lacks the axis/axes {', '.join(missing)}")
        names = list(CORE_NAMES) + [n for n in values if n not in CORE_NAMES]
        self.axes: tuple[Axis, ...] = tuple(_axis(n) for n in names)
        self.values: dict[str, list[str]] = {}
        for axis in self.axes:
            vals = values[axis.name]
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
                raise ValueError(f"sweep.{axis.name}: must be a non-empty list of values, got {vals!r}")
            formatted = [axis.format(v) for v in vals]
            if len(set(formatted)) != len(formatted):
                raise ValueError(f"sweep.{axis.name}: two values give the same folder name ({formatted})")
            self.values[axis.name] = formatted
        # the correction wildcard is shared with the coefficient and feature rules: every configured correction
        self.corrections = list(corrections) if corrections is not None else self.values["correction"]

    @classmethod
    def from_config(cls, config: Mapping) -> RunLayout:
        """The grid of a validated config: `sweep:` gives the axes; `correction.references` the known corrections."""
        refs = config.get("correction", {}).get("references")
        return cls(config["sweep"], corrections=list(refs) if refs else None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def extra_names(self) -> tuple[str, ...]:
        return self.names[len(CORE_NAMES):]

    def pattern(self, results: str = "results") -> str:
        """The run folder's path pattern with one wildcard per axis: results/runs/{correction}/T{temperature}/..."""
        return "/".join([results, RUNS_DIR, *(a.wildcard() for a in self.axes)])

    def relative_pattern(self) -> str:
        """The same below runs/ (names the run's log and benchmark files)."""
        return "/".join(a.wildcard() for a in self.axes)

    def glob(self, results: str | Path = "results", name: str = "metrics.json") -> str:
        """A glob for one file of every run folder under `results` (runs/*/T*/*/seed*/...)."""
        return "/".join([str(results), RUNS_DIR, *(a.prefix + "*" for a in self.axes), name])

    def keys(self, **only: Any) -> list[RunKey]:
        """Every run of the grid (the product over the axes, in axis order), optionally only those whose axes
        equal the given values (given as values or as their folder names: temperature=1 or '1')."""
        unknown = [k for k in only if k not in self.names]
        if unknown:
            raise ValueError(f"no sweep axis {', '.join(unknown)} (axes: {', '.join(self.names)})")
        want = {k: _axis(k).format(v) for k, v in only.items() if v is not None}
        out = []
        for combo in itertools.product(*(self.values[n] for n in self.names)):
            key = RunKey(tuple(zip(self.names, combo)))
            if all(key[k] == v for k, v in want.items()):
                out.append(key)
        return out

    def __iter__(self) -> Iterator[RunKey]:
        return iter(self.keys())

    def __len__(self) -> int:
        n = 1
        for v in self.values.values():
            n *= len(v)
        return n

    def wildcard_constraints(self) -> dict[str, str]:
        """Snakemake's wildcard constraints of the axes: a fixed format for the paper's axes (the correction:
        one of the configured corrections), exactly the configured values for any other."""
        out = {}
        for a in self.axes:
            if a.name == "correction":
                out[a.name] = "|".join(map(re.escape, self.corrections))
            elif a.pattern is not None:
                out[a.name] = a.pattern
            else:
                out[a.name] = "|".join(map(re.escape, self.values[a.name]))
        return out


def parse_run_dir(path: str | PurePath) -> RunKey | None:
    """The run key of a run folder, read from the end of its path (no config needed): any trailing
    `{name}={value}` folders are extra axes, and the four before them `{correction}/T{T}/{loss}/seed{seed}`.
    None when the path does not end in a run folder."""
    parts = list(PurePath(path).parts)
    extras: list[tuple[str, str]] = []
    while parts and "=" in parts[-1]:
        name, _, value = parts.pop().partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not value:
            return None
        extras.insert(0, (name, value))
    if len(parts) < len(CORE_AXES):
        return None
    core: list[tuple[str, str]] = []
    for axis, part in zip(CORE_AXES, parts[-len(CORE_AXES):]):
        if not part.startswith(axis.prefix):
            return None
        value = part[len(axis.prefix):]
        if not value or (axis.name in ("temperature", "seed") and not re.fullmatch(str(axis.pattern), value)):
            return None  # a T or seed folder that is not a number: not a run folder
        core.append((axis.name, value))
    return RunKey(tuple(core + extras))


def run_label(wildcards: Mapping[str, Any], missing: str = "?") -> str:
    """A run's wildcards as one name, the paper's axes first ('ref_abc/1/focal/0'), then the others' name=value."""
    core = [str(wildcards.get(k, missing)) for k in CORE_NAMES]
    return "/".join(core + [f"{k}={v}" for k, v in wildcards.items() if k not in CORE_NAMES])


def find_runs(results: str | os.PathLike, name: str = "metrics.json") -> list[Path]:
    """Every `name` in a run folder under results/runs/, whatever axes made them (sorted): the paper's four
    levels, then any number of `{axis}={value}` levels."""
    root = Path(results) / RUNS_DIR
    found = []
    level = sorted(root.glob("/".join(a.prefix + "*" for a in CORE_AXES)))
    while level:
        deeper = []
        for folder in level:
            key = parse_run_dir(folder.relative_to(root))
            if key is None or len(key.axes) != len(folder.relative_to(root).parts):
                continue
            if (folder / name).is_file():
                found.append(folder / name)
            deeper += [d for d in folder.glob("*=*") if d.is_dir()]
        level = deeper
    return sorted(found)
