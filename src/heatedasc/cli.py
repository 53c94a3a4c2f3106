"""The `heatedasc` command: every subcommand's arguments are defined here, the work is done in the library.

Exit status: 0 success; 1 an error (the message goes to stderr, prefixed with the command); 3 a check
that ran and found a difference (`lineage`: a link is stale; `compare`: a number is outside the tolerance).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

EXIT_ERROR = 1
EXIT_DIFFERENT = 3
PROG = "heatedasc"

CONFIGFILE_HELP = (
    "config files merged in order, later ones winning, exactly as `snakemake --configfile` merges them "
    "(default: the pipeline's own files, params.yaml's pipeline.configfiles — what `dvc repro` runs)"
)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on stderr and exit status 1 like every other error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _version() -> str:
    try:
        return metadata.version("heatedasc")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _configfiles(args) -> list[str] | None:
    """The files a command merges: params.yaml first, then --configfile's, as the Snakefile and `snakemake
    --configfile` merge them (None: the pipeline's default files)."""
    from heatedasc.config import PARAMS_FILE, REPO_ROOT

    if not args.configfile:
        return None
    files = list(args.configfile)
    if Path(files[0]).name == PARAMS_FILE:  # given first already, as DVC's stages and the README give it
        return files
    params = PARAMS_FILE if Path(PARAMS_FILE).is_file() else str(REPO_ROOT / PARAMS_FILE)  # the Snakefile's
    return [params, *files]


# --------------------------------------------------------------------------------------- commands


def _synth(args) -> int:
    from heatedasc.ownership import check_synthetic_root
    from heatedasc.synth import generate_dataset

    check_synthetic_root(args.root, key="--root", hint="so heatedasc synth will not write there: it writes only "
                         "into a new or empty folder, or one it generated itself before")
    summary = generate_dataset(
        args.root, seed=args.seed, clip_seconds=args.clip_seconds, sample_rate=args.sample_rate,
        train_parallel_per_scene=args.train_parallel_per_scene, train_a_only_per_scene=args.train_a_only_per_scene,
        evaluate_parallel_per_scene=args.evaluate_parallel_per_scene,
        evaluate_a_only_per_scene=args.evaluate_a_only_per_scene, device_a_48k_stereo=args.device_a_48k_stereo,
        cities=args.cities, device_strength_db=args.device_strength_db,
        segments_per_location=args.segments_per_location, progress=not args.no_progress,
    )
    print(f"wrote {summary['n_files']} files to {summary['root']} ({summary['counts']})")
    return 0


def _config(args) -> int:
    from heatedasc import config as cfg

    files = _configfiles(args) or cfg.default_configfiles()
    if args.write:
        cfg.write_effective_config(files, args.write)
        print(f"wrote {args.write} ({' + '.join(files)})", file=sys.stderr)
        return 0
    config = cfg.load_config(files)
    if args.check_edits:
        cfg.check_hidden_edits(files)
    sys.stdout.write(cfg.dump_config(config))
    return 0


def _report(args) -> int:
    from heatedasc.config import load_config
    from heatedasc.report.render import render_all

    config = load_config(_configfiles(args))
    for key, path in render_all(args.results, config, args.out).items():
        print(f"{key:16s} {path}")
    return 0


def _lineage(args) -> int:
    import json

    from heatedasc import lineage
    from heatedasc.config import default_configfiles, load_config

    files = _configfiles(args) or default_configfiles()
    config = load_config(files)  # a bad config is named here, not inside snakemake's output
    decisions = None if args.no_plan else lineage.plan(files)
    root = lineage.audit(args.target, results_dir=args.results, decisions=decisions, data_root=config["data"]["root"])
    if args.json:
        print(json.dumps(lineage.to_dict(root), indent=2))
    else:
        print(lineage.render(root, verbose=args.verbose))
        stale = lineage.stale_records(root)
        print(f"\n{args.target}: " + ("every link matches what is on disk and what each job would read now"
                                      if not root.stale else f"STALE — {len(stale)} job(s) changed: " + ", ".join(stale)))
    return EXIT_DIFFERENT if root.stale else 0


def _compare(args) -> int:
    from heatedasc.compare import compare

    result, text = compare(args.results, args.reference)
    print(text)
    return 0 if result in ("identical", "within") else EXIT_DIFFERENT


# ------------------------------------------------------------------------------------- the parser


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Heated-up softmax + spectrum correction for mismatched-device acoustic scene classification "
        "(Nguyen, Pernkopf & Kośmider, ICASSP 2020): the tools around the Snakemake/DVC workflow.",
        epilog="Exit status: 0 success; 1 an error (message on stderr); 3 a check found a difference "
        "(lineage: a stale link; compare: a number that differs where it must not). `heatedasc COMMAND --help` describes each "
        "command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    p = sub.add_parser(
        "synth", help="write a synthetic dataset in the TAU 2019 Mobile layout",
        description="Write a deterministic synthetic dataset in the exact TAU Urban Acoustic Scenes 2019 Mobile "
        "layout (audio/*.wav, meta.csv, evaluation_setup/fold1_*.csv) with parallel a/b/c recordings whose device "
        "frequency responses differ, so spectrum correction measurably helps. The same seed gives byte-identical "
        "files. The folder must be new, empty, or one this command wrote before (it leaves a "
        ".heatedasc-synthetic.json marker there); a folder holding anything else is refused, never replaced.",
    )
    p.add_argument("--root", required=True, help="the output folder")
    p.add_argument("--seed", type=int, required=True, help="the seed of the data draw")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    p.add_argument("--sample-rate", type=int, default=44100, help="sample rate in Hz (default 44100)")
    p.add_argument("--train-parallel-per-scene", type=int, default=54,
                   help="training segments per scene recorded by a, b and c (default 54, as the real set)")
    p.add_argument("--train-a-only-per-scene", type=int, default=864,
                   help="training segments per scene recorded by a only (default 864)")
    p.add_argument("--evaluate-parallel-per-scene", type=int, default=54,
                   help="evaluation segments per scene recorded by a, b and c (default 54)")
    p.add_argument("--evaluate-a-only-per-scene", type=int, default=364,
                   help="evaluation segments per scene recorded by a only (default 364)")
    p.add_argument("--device-a-48k-stereo", action="store_true",
                   help="write device-a files as 48 kHz stereo (exercises resampling and downmixing)")
    p.add_argument("--cities", nargs="+", default=["barcelona", "helsinki", "lisbon", "london", "lyon", "milan",
                                                   "paris", "prague", "stockholm", "vienna"],
                   help="city names (no '-'); locations are spread over them")
    p.add_argument("--device-strength-db", type=float, default=12.0,
                   help="peak-to-peak size of the b/c frequency-response deviations in dB (default 12)")
    p.add_argument("--segments-per-location", type=int, default=4, help="segments recorded at one location")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "config", help="print the merged, validated configuration",
        description="Merge the config files as Snakemake does, validate them against the workflow's schema and "
        "cross-check their keys, then print the result (the configuration a run would use). With --write, also "
        "refuse edits that a later file overrides (e.g. a params.yaml key that config/smoke.yaml sets too) and "
        "write the file DVC tracks as the run's parameters.",
    )
    p.add_argument("--configfile", nargs="+", metavar="FILE", help=CONFIGFILE_HELP)
    p.add_argument("--check-edits", action="store_true",
                   help="fail when a key changed since the last commit is overridden by a later config file")
    p.add_argument("--write", metavar="PATH", help="write the merged configuration there (implies --check-edits)")
    p.set_defaults(func=_config)

    p = sub.add_parser(
        "report", help="render the tables, figures and HTML page from the runs that exist",
        description="Render Table 2, Table 3, Fig. 3, Fig. 2, the calibration, confusion and significance tables "
        "and the self-contained HTML page from the per-run outputs under RESULTS/runs — the same code the "
        "workflow's report rules run — into a folder of its own (--out). Useful after a partial sweep: cells "
        "without runs are shown as missing. The workflow's tracked report is left as it is.",
    )
    p.add_argument("--results", default="results", help="the results folder to read runs from (default: results)")
    p.add_argument("--out", default="partial-report",
                   help="the folder to write into (default: partial-report); never the workflow's own results, "
                        "which Snakemake and DVC track")
    p.add_argument("--configfile", nargs="+", metavar="FILE", help=CONFIGFILE_HELP)
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "lineage", help="audit where a result came from",
        description="Walk a result back through the jobs that made it — their provenance records — to the raw "
        "audio and the code, checking every recorded content hash against the disk and, after a dry run of the "
        "workflow with the given configuration, each job's recorded recipe against the one it would run with "
        "now: a changed param is named by key, a library file or a raw audio file by name. Exit status 3 when "
        "anything no longer matches (stale).",
    )
    p.add_argument("target", help="a workflow output, e.g. results/tables/table3.csv")
    p.add_argument("--results", default="results", help="the results folder holding the provenance records")
    p.add_argument("--configfile", nargs="+", metavar="FILE", help=CONFIGFILE_HELP)
    p.add_argument("--no-plan", action="store_true",
                   help="check recorded content hashes only (no dry run of the workflow, no recipe comparison)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every link, not only the changed ones")
    p.set_defaults(func=_lineage)

    p = sub.add_parser(
        "compare", help="say whether the results reproduce the committed reference",
        description="Compare results/metrics.json with the reference the repository carries (by default the "
        "file as git's HEAD has it) and print one verdict: identical (every number to the last digit: expected "
        "wherever the runs were pinned, cpu.kernels avx2, and trained on a CPU with AVX2), within the demo's "
        "resolution (where identity is not expected: cpu.kernels native or a GPU; every accuracy within 3 standard "
        "errors of a retrained model on its test clips, at least one clip), or different (exit status 3), listing "
        "every number that differs.",
    )
    p.add_argument("--results", default="results", help="the results folder (default: results)")
    p.add_argument("--reference", default="git:HEAD",
                   help="git:REV (results/metrics.json at that revision; default git:HEAD) or a metrics.json path")
    p.set_defaults(func=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    func: Callable = args.func
    try:
        return int(func(args) or 0)
    except (ValueError, OSError) as exc:  # the library's errors name the file, row or key
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
