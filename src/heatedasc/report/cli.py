"""`heatedasc report [--results results] [--configfile params.yaml config/smoke.yaml ...]`: render every
table, figure and the HTML page from whatever runs exist.

It globs results/runs/*/T*/*/seed*/metrics.json, so a partial sweep (after failed jobs) can still be
reported; cells without runs are shown as "missing", never as 0.
"""

from __future__ import annotations

from pathlib import Path


def load_config(configfiles) -> dict:
    """Merge the config files as Snakemake does and validate them against the workflow's schema."""
    from heatedasc.lineage import load_config as merge

    missing = [f for f in configfiles if not Path(f).is_file()]
    if missing:
        raise ValueError(f"config file(s) not found: {', '.join(missing)}")
    config = merge(configfiles)
    schema = Path(configfiles[0]).resolve().parent / "workflow" / "schemas" / "config.schema.yaml"
    if schema.is_file():
        import jsonschema
        import yaml

        try:
            jsonschema.validate(config, yaml.safe_load(schema.read_text()))
        except jsonschema.ValidationError as exc:
            where = ".".join(map(str, exc.absolute_path)) or "(top level)"
            raise ValueError(f"config key {where}: {exc.message}") from None
    for key in ("report", "paper", "sweep"):
        if key not in config:
            raise ValueError(f"config lacks the `{key}:` section (pass params.yaml first)")
    if "correction" in config and "data" in config:
        from heatedasc.config import check_consistency

        check_consistency(config)
    return config


def main(argv: list[str] | None = None) -> int:
    import argparse

    from heatedasc.report.render import render_all

    ap = argparse.ArgumentParser(prog="heatedasc report", description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="the results folder (runs/ inside it; artefacts go there)")
    ap.add_argument("--configfile", nargs="+", default=["params.yaml"],
                    help="config files merged in order, as for snakemake (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.configfile)
        out = render_all(args.results, config)
    except ValueError as exc:
        print(f"report: {exc}")
        return 2
    for key, p in out.items():
        print(f"{key:16s} {p}")
    return 0
