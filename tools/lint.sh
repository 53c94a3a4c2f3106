#!/usr/bin/env bash
# The guard rails `make test` runs first: ruff (lint rules and import order, pyproject.toml [tool.ruff]), dvc.yaml
# regenerated from the code graph, and `snakemake --lint` with one advice set aside (a conda environment per rule:
# the workflow runs in one environment, requirements.lock / environment.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests workflow benchmarks
python -m heatedasc.dvcstages --check
out=$(snakemake --lint --configfile params.yaml config/smoke.yaml 2>&1) || true
other=$(printf '%s\n' "$out" | grep '^    \* ' | grep -v 'Specify a conda environment or container for each rule' || true)
if [ -n "$other" ]; then
  printf '%s\n' "$out"
  echo "snakemake --lint found:"; printf '%s\n' "$other"
  exit 1
fi
echo "lint: ruff clean, dvc.yaml current, snakemake --lint clean (per-rule conda advice aside)"
