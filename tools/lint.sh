#!/usr/bin/env bash
# The guard rails `make test` runs beside the test suite (and .pre-commit-config.yaml on every commit): ruff
# (lint rules and import order, pyproject.toml [tool.ruff]), mypy (the types of src/heatedasc, pyproject.toml
# [tool.mypy]), dvc.yaml regenerated from the code graph, and `snakemake --lint`, clean.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests workflow benchmarks tools
mypy --ignore-missing-imports src/heatedasc
python -m heatedasc.dvcstages --check
snakemake --lint --configfile params.yaml config/smoke.yaml
echo "lint: ruff clean, mypy clean, dvc.yaml current, snakemake --lint clean"
