# The embedded default needs only Python 3.11 and pip. Every target installs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
export COSMICMAN_HOME ?= $(CURDIR)/.cosmicman
export DAGSTER_HOME ?= $(COSMICMAN_HOME)/dagster

.PHONY: install run lint test test-deploy ui clean

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

# the deployment's end-to-end checks, out of the default run: a production turn on a throwaway PostgreSQL and a
# local S3 server (moto), a backfill of every variant against the GPU concurrency pool, the secrets scan, and
# Label Studio's S3 storage and change feed on a second server
test-deploy: install
	$(PY) -m pytest -q -m deploy

# the instance make run uses (its dagster.yaml written when absent), with the same settings
ui: install
	$(PY) -c 'import sys, pathlib; from cosmicman.cli.instance import prepare_instance; prepare_instance(pathlib.Path(sys.argv[1]))' $(COSMICMAN_HOME)
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

clean:
	rm -rf $(COSMICMAN_HOME)
