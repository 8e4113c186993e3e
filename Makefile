# Two commands for a fresh clone:  make demo   |   make test
# Each creates/updates ./.venv from this repo's own files, then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU machines get the small CPU build of torch; machines with an NVIDIA driver get the CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.4,<2.15' || echo 'torch==2.13.0')
PYTEST_ARGS ?=

.PHONY: demo test test-all test-gpu lint clean venv
venv: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: venv
	$(PY) -m megatron_moe.demo

test: venv
	$(PY) -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: venv
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
