"""Mutation testing of the numeric core (`make mutants`; not part of CI): a score per module, every survivor
either explained as equivalent (tools/equivalent-mutants.txt) or listed as a gap in the tests.

mutmut (pinned in requirements.lock) mutates the modules listed in pyproject.toml [tool.mutmut] only_mutate and
runs, for each mutant, the fast tests that cover the mutated function (the selection in
pytest_add_cli_args_test_selection). This wrapper runs it on the modules asked for, then scores:

    score = killed / (mutants - equivalent)

An equivalent mutant changes no behaviour the pipeline can reach (e.g. ``sum(dim=-1)`` → ``sum(dim=+1)`` on
a 2-D [batch, class] tensor). tools/equivalent-mutants.txt lists each by the line it changes, not by mutmut's
number (numbers move when the code does), with one line of reason:

    <module>  <function>  <original line> ⇒ <mutated line>  # reason

Usage:
    python tools/mutants.py                       # every module of only_mutate
    python tools/mutants.py losses correction     # some modules (heatedasc.<name>)
    python tools/mutants.py --report              # score what the last run left in mutants/, run nothing

Exit status 1 when a survivor is not explained, 0 otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT = REPO / "tools" / "equivalent-mutants.txt"
NAME = re.compile(r"^\s*(?P<name>[\w.]+)__mutmut_(?P<n>\d+): (?P<status>.+)$")


def only_mutate() -> list[str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    return [Path(p).relative_to("src").with_suffix("").as_posix().replace("/", ".") for p in cfg["only_mutate"]]


def mutmut(*args: str, capture: bool = True) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    proc = subprocess.run([str(exe), *args], cwd=REPO, capture_output=capture, text=True)
    if proc.returncode not in (0, 1):  # mutmut run exits 1 when mutants survive
        raise SystemExit(f"mutmut {' '.join(args)} failed (exit {proc.returncode}):\n{(proc.stderr or '')[-3000:]}")
    return proc.stdout or ""


def results() -> dict[str, str]:
    """{mutant name: status} of every mutant mutmut knows."""
    out = {}
    for line in mutmut("results", "--all", "true").splitlines():
        m = NAME.match(line)
        if m:
            out[f"{m['name']}__mutmut_{m['n']}"] = m["status"].strip()
    return out


def change(name: str) -> tuple[str, str, str, str]:
    """(module, function, original line, mutated line) of a mutant, from `mutmut show`."""
    module, func = name.split("__mutmut_")[0].rsplit(".", 1)
    func = re.sub(r"^x[ǁ_]", "", func).replace("ǁ", ".")  # mutmut names functions x_<f> and methods xǁ<C>ǁ<f>
    minus = plus = ""
    for line in mutmut("show", name).splitlines():
        if line.startswith("-") and not line.startswith("---"):
            minus = minus or line[1:].strip()
        elif line.startswith("+") and not line.startswith("+++"):
            plus = plus or line[1:].strip()
    return module, func, minus, plus


def equivalents() -> dict[tuple[str, str, str, str], str]:
    out = {}
    for n, raw in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, _, reason = line.rpartition("  # ")  # the code may hold a comment of its own
        parts = body.split("  ", 2)
        if len(parts) != 3 or " ⇒ " not in parts[2] or not reason.strip():
            raise SystemExit(f"{EQUIVALENT.name}:{n}: expected '<module>  <function>  <old> ⇒ <new>  # reason'")
        old, new = (s.strip() for s in parts[2].split(" ⇒ ", 1))
        out[(parts[0], parts[1], old, new)] = reason.strip()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="modules to mutate (default: pyproject's only_mutate)")
    ap.add_argument("--report", action="store_true", help="score the last run, run nothing")
    args = ap.parse_args(argv)
    known = only_mutate()
    named = [m if m.startswith("heatedasc.") else f"heatedasc.{m}" for m in args.modules]
    # a sub-package (train) stands for its modules in only_mutate (heatedasc.train.maths, ...)
    wanted = [k for m in named for k in ([m] if m in known else [k for k in known if k.startswith(m + ".")] or [m])]
    wanted = wanted or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise SystemExit(f"not in pyproject.toml [tool.mutmut] only_mutate: {', '.join(unknown)}")
    t0 = time.perf_counter()
    if not args.report:
        mutmut("run", *[f"{m}.*" for m in wanted], capture=False)
    seconds = time.perf_counter() - t0
    found = {k: v for k, v in results().items() if k.rsplit(".", 1)[0] in wanted}
    explained = equivalents()
    used: set = set()
    rows, gaps = [], []
    for module in wanted:
        mine = {k: v for k, v in found.items() if k.rsplit(".", 1)[0] == module}
        counts = Counter(mine.values())
        equivalent = 0
        for name, status in sorted(mine.items()):
            if status in ("survived", "no tests"):
                key = change(name)
                if key in explained:
                    equivalent += 1
                    used.add(key)
                else:
                    gaps.append(f"{name} ({status}): {key[1]}: {key[2]}  ⇒  {key[3]}")
        total = sum(counts.values())
        scored = total - equivalent
        score = counts["killed"] / scored if scored else float("nan")
        rows.append((module, total, counts["killed"], equivalent, scored - counts["killed"], score))
    print(f"\n{'module':<34} {'mutants':>8} {'killed':>7} {'equiv.':>7} {'other':>6} {'score':>7}")
    for module, total, killed, eq, other, score in rows:
        print(f"{module:<34} {total:>8} {killed:>7} {eq:>7} {other:>6} {score:>7.1%}")
    total = sum(r[1] for r in rows)
    killed, eq = sum(r[2] for r in rows), sum(r[3] for r in rows)
    if total - eq:
        print(f"{'all':<34} {total:>8} {killed:>7} {eq:>7} {total - eq - killed:>6} {killed / (total - eq):>7.1%}")
    if not args.report:
        print(f"run time: {seconds / 60:.1f} min")
    stale = [k for k in explained if k[0] in wanted and k not in used]
    for k in stale:
        print(f"note: listed as equivalent but no such survivor now: {k[0]} {k[1]}: {k[2]} ⇒ {k[3]}")
    if gaps:
        print(f"\n{len(gaps)} survivor(s) not explained (a missing test, or an equivalent mutant to list in "
              f"{EQUIVALENT.relative_to(REPO)}):")
        print("\n".join(f"  {g}" for g in gaps))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
