# ncutils — two commands do everything on a fresh machine: `make figures`, `make test`.
SHELL := /bin/bash
.DELETE_ON_ERROR:
.PHONY: all venv figures test unit nbval golden lab lint lock clean sweep site bench docs gpu-check

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The environment is rebuilt whenever the lock file or pyproject.toml change (content hash, not mtime).
ENV_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.ncutils-env-$(ENV_HASH)
# Where notebooks that read real datasets look for them (torchvision layout); e.g. DATA_ROOT=/path/to/data
DATA_ROOT ?=
# make figures runs this many notebooks/profiles at once (each with cores/JOBS threads)
JOBS   ?= $(shell nproc 2>/dev/null || echo 1)
# make sweep SWEEP=sweeps/ufm_lambda.yaml [SWEEP_ARGS=--retry-failed]
SWEEP  ?= sweeps/ufm_lambda.yaml
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/golden/sanitize.cfg

all: figures

$(STAMP): requirements.lock pyproject.toml
	rm -rf $(VENV)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); if [ "$$free" -lt 8 ]; then \
	  echo "make: warning: $$free GiB free here; the environment needs about 7 GiB (torch and its CUDA libraries)" >&2; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name ncutils --display-name "Python (ncutils)"
	touch $@

venv: $(STAMP)

## figures: run every notebook at paper settings (only those whose code, profile or ncutils changed)
figures: venv
	NCUTILS_DATA_ROOT="$(DATA_ROOT)" $(PY) -m ncutils figures --jobs $(JOBS)

## test: lint, unit tests + nbval regression of the golden notebooks (-rs: skipped tests say why)
test: venv
	$(VENV)/bin/ruff check ncutils tests bench
	$(PY) -m pytest -q -rs $(NBVAL) tests

## sweep: run a sweep file (many parameter sets of one notebook) and aggregate it into <output>/table.csv|parquet
sweep: venv
	NCUTILS_DATA_ROOT="$(DATA_ROOT)" $(PY) -m ncutils sweep $(SWEEP) $(SWEEP_ARGS)

## site: render every executed notebook to an offline HTML gallery in site/ (index.html)
site: venv
	$(PY) -m ncutils site -o site

## docs: HTML API reference from the docstrings (pdoc) in docs/api/ (git-ignored)
docs: venv
	$(PY) -m pdoc --docformat numpy -o docs/api ncutils.metrics ncutils.stream ncutils.measure ncutils.theory \
	  ncutils.models ncutils.nets ncutils.solve ncutils.perturbation ncutils.ulpm ncutils.phase ncutils.data \
	  ncutils.train ncutils.report ncutils.integrations

## bench: batched vs Python-loop UFM solver (docs/benchmarks.md)
bench: venv
	$(PY) bench/batched_ufm.py

## gpu-check: on a GPU machine, within 9 minutes: tests marked gpu, batched UFM, ResNet18 epoch time vs a DataLoader
## fp32 loop and the bf16 floor, measurement overhead, TB22 Fig. 5 on $(DATA_ROOT)'s MNIST; one report in
## outputs/gpu_check/report.{json,md} (docs/benchmarks.md). Uses the venv's python when there is one, else `python`
## (the GPU machine: no venv, its own torch); no venv dependency. E.g. make gpu-check GPU_CHECK_ARGS="--quick --device cpu"
GPU_CHECK_PY := $(if $(wildcard $(PY)),$(PY),python)
gpu-check:
	NCUTILS_DATA_ROOT="$(DATA_ROOT)" $(GPU_CHECK_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

unit: venv
	$(PY) -m pytest -q tests --ignore=tests/golden

nbval: venv
	$(PY) -m pytest -q $(NBVAL) tests/golden

## golden: regenerate tests/golden/*.ipynb from the small profiles
golden: venv
	$(PY) -m ncutils golden

lab: venv
	$(VENV)/bin/jupyter lab notebooks

lint: venv
	$(VENV)/bin/ruff check ncutils tests bench

## lock: re-pin every dependency from the current environment
lock: venv
	{ head -n 2 requirements.lock; $(PY) -m pip freeze --all --exclude-editable | grep -v -i -E '^(ncutils|neural-collapse-utils|pip)==' \
	  | sed -E 's/^((nvidia-[^=]*|triton)==.*)$$/\1 ; platform_system == "Linux" and platform_machine == "x86_64"/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf outputs site .pytest_cache
