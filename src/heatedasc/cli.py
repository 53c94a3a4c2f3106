"""Command-line entry point: `heatedasc <command> ...`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="heatedasc", description=__doc__)
    parser.add_argument("command", choices=["synth"], help="synth: write a synthetic TAU-layout dataset")
    args, rest = parser.parse_known_args(argv)
    if args.command == "synth":
        from heatedasc.synth import main as synth_main

        return synth_main(rest) or 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
