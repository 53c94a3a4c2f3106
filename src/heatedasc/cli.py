"""Command-line entry point: `heatedasc <command> ...`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="heatedasc", description=__doc__)
    parser.add_argument(
        "command",
        choices=["synth", "lineage", "report"],
        help="synth: write a synthetic TAU-layout dataset; lineage: audit where a result came from; "
        "report: render every table, figure and the HTML report from the runs that exist",
    )
    args, rest = parser.parse_known_args(argv[:1])
    rest = argv[1:]
    if args.command == "synth":
        from heatedasc.synth import main as synth_main

        return synth_main(rest) or 0
    if args.command == "lineage":
        from heatedasc.lineage import main as lineage_main

        return lineage_main(rest)
    if args.command == "report":
        from heatedasc.report.cli import main as report_main

        return report_main(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
