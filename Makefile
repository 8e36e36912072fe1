# The embedded default needs only Python 3.11 and pip. Every target installs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
export COSMICMAN_HOME ?= $(CURDIR)/.cosmicman
export DAGSTER_HOME ?= $(COSMICMAN_HOME)/dagster

.PHONY: install run lint test test-fast test-deploy mutants ui clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; anything unpinned would pull CUDA builds.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,train]'
	# Only for the CLIP BPE vocabulary it ships; open_clip itself needs torchvision, so no deps.
	$(PY) -m pip install --quiet --no-deps open-clip-torch==3.3.0
	rm -f $(VENV)/.installed-*
	touch $@

# make run trains the noise-only baseline and HOLA (the summary says so); the activation variants cost a
# training and an evaluation each: add them with e.g. make run RUN_VARIANTS="baseline hola hola-gelu"
RUN_VARIANTS ?= baseline hola
run: install
	$(PY) -m cosmicman.cli run --variants $(RUN_VARIANTS)

# ruff's formatter and lint rules, then mypy; their settings are in pyproject.toml
lint: install
	$(VENV)/bin/ruff format --check cosmicman tests bench
	$(VENV)/bin/ruff check cosmicman tests bench
	$(VENV)/bin/mypy

# lint is a prerequisite: a finding stops the run before pytest starts
test: lint
	$(PY) -m pytest -q

# the suite that guards every rule, without the end-to-end turns (slow) and the browser (ui): minutes, for each
# edit; one pytest-xdist worker per core
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto -m 'not slow and not ui and not deploy'

# the deployment's end-to-end checks, out of the default run: a production turn on a throwaway PostgreSQL and a
# local S3 server (moto), a backfill of every variant against the GPU concurrency pool, the secrets scan, and
# Label Studio's S3 storage and change feed on a second server
test-deploy: install
	$(PY) -m pytest -q -m deploy

# mutation testing: mutmut breaks the rule modules ([tool.mutmut] in pyproject.toml) one change at a time and runs
# the fast tests that execute the changed line; the summary (also in mutants/summary.txt) fails the target when
# fewer than 90 % are killed or a survivor is neither killed by a test nor in tests/mutants_equivalent.toml
mutants: install
	rm -rf mutants && mkdir mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run > mutants/run.log 2>&1 || (tail -c 2000 mutants/run.log; exit 1)
	$(PY) -m tests.support.mutants_report > mutants/summary.txt; status=$$?; cat mutants/summary.txt; exit $$status

# the instance make run uses (its dagster.yaml written when absent), with the same settings
ui: install
	$(PY) -c 'import sys, pathlib; from cosmicman.cli.instance import prepare_instance; prepare_instance(pathlib.Path(sys.argv[1]))' $(COSMICMAN_HOME)
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

clean:
	rm -rf $(COSMICMAN_HOME)
