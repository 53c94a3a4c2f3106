# The two commands of the README:
#   make demo   - install everything, then run the whole DAG on the synthetic demo (dvc repro)
#   make test   - install everything, then the guard rails (make lint) and the whole test suite (make suite), side by side
# Also: make lint, make test-fast (the unit tests, no workflow runs: about a minute), make pull, make clean-results,
#   make mutants (mutation testing of the numeric core; not in CI, long: MODULES="losses correction" for some),
#   make gpu-check (on a machine with a CUDA GPU: the GPU correctness tests, then the GPU timing benchmark)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test suite test-fast lint pull clean-results mutants gpu-check

setup: $(STAMP)

# Re-install only when the pinned requirements or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	 { echo "make: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); the pinned lock needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# pip compiles every installed module to bytecode one file at a time (about 30 s of the install); compileall
	@# does the same on every core. Errors are ignored as pip ignores them (a file that does not compile gets no .pyc).
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.lock
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "import torch, torchaudio, heatedasc; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
	touch $(STAMP)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show
	@echo "Tables: results/tables/table2.md results/tables/table3.md; figures: results/figures/"

lint: setup
	PATH="$(abspath $(BIN)):$$PATH" tools/lint.sh

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder -m "not workflow and not slurm"

test: setup
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then tools/local-slurm.sh install && \
	   { command -v chromium >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	 else echo "make test: not root, SLURM and Chromium are not installed here; their tests skip if absent"; fi
	@# The guard rails and the suite side by side (make's own -j): the suite's first minutes leave a core to spare
	@# while the SLURM sweep waits for its scheduler. Either one failing fails `make test` (make waits for the other
	@# to end first, so a lint error is reported when the suite ends; its lines stand among pytest's).
	@$(MAKE) --no-print-directory -j2 lint suite

# The whole test suite (what `make test` runs beside `make lint`).
suite: setup
	@# Snakemake's SLURM plugin runs `scontrol show config` each time snakemake starts: with SLURM installed but its
	@# daemons down, that waits ~9 s per call. So the local node runs for the whole session (stopped after, if started here).
	started=; if [ "$$(id -u)" = 0 ] && command -v slurmctld >/dev/null && ! tools/local-slurm.sh status; then \
	   tools/local-slurm.sh start && started=1; fi; \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder --durations=10; \
	rc=$$?; if [ -n "$$started" ]; then tools/local-slurm.sh stop; fi; exit $$rc

# On a GPU machine: what the GPU changes must not change (tests/test_gpu.py, `gpu` marker: compiled vs eager, bf16 vs
# fp32, determinism and resume, the CUDA feature path; they skip without CUDA), then what it costs
# (benchmarks/gpu_check.py, timing only; its files go to GPU_CHECK_OUT). The benchmark runs even if a check fails.
GPU_CHECK_OUT ?= gpu_check
gpu-check: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m gpu -ra tests/test_gpu.py; rc=$$?; \
	$(BIN)/python benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) || rc=1; exit $$rc

# Mutation testing (tools/mutants.py): a score per module, every survivor explained or listed. Not part of CI.
mutants: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tools/mutants.py $(MODULES)

# Results from a DVC remote: DVC alone (its pinned versions from requirements.lock), not the whole environment
# (torch is gigabytes). Nothing else to run afterwards: the workflow compares content, so the fresh file dates of
# restored files rerun nothing (heatedasc.currency).
pull: $(BIN)/dvc
	$(BIN)/dvc pull

$(BIN)/dvc:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	 { echo "make: $(PYTHON) is older than Python 3.11, which the pinned lock needs (set PYTHON=python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock dvc

clean-results:
	rm -rf results/prepared results/coefficients results/features results/runs results/tables results/figures \
	  results/metrics results/metrics.json results/config.yaml results/report.html results/report.provenance.json logs .snakemake
