# Two commands for a fresh clone:  make demo   |   make test
# Each creates ./.venv with exactly the versions of requirements/cpu.lock (or gpu.lock on a machine with an
# NVIDIA driver), then runs. The venv is rebuilt from scratch whenever the lock, setup.py or pyproject.toml change.
# `make lock` regenerates the locks from setup.py's ranges; `make test-latest` runs the suite on the newest
# releases those ranges allow (the upgrade canary). docs/install.md says how to move the lock forward.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   ?= requirements/$(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu).lock
# The CPU lock pins torch's CPU build (`+cpu`), which is on PyTorch's CPU index, not on PyPI. pip tries its
# configured indexes and find-links first (a mirror or wheel directory), then adds this index.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
LATEST_VENV ?= .venv-latest

.PHONY: demo test test-all test-gpu test-latest lock clean venv docker-test
venv: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r $(LOCK) || \
	  { echo "-- retrying with $(TORCH_CPU_INDEX) for torch's CPU build"; \
	    $(PY) -m pip install -q --extra-index-url $(TORCH_CPU_INDEX) -r $(LOCK); }
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@echo $(LOCK) > $@

demo: venv
	$(PY) -m megatron_moe.demo

test: venv
	$(PY) -m pytest -q -m "not gpu and not slow" --durations=25 $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: venv
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The upgrade canary: a separate venv with the newest releases setup.py's ranges allow (no lock), then the suite.
# It prints which versions differ from the CPU lock.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip check
	$(LATEST_VENV)/bin/python tools/lock_diff.py requirements/cpu.lock
	$(LATEST_VENV)/bin/python -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

# Regenerate both locks from setup.py's ranges with the newest releases (LOCK_UPGRADE= keeps the pins that still
# fit, for adding one dependency). Then run `make test` and commit the locks with the code they passed with.
LOCK_UPGRADE ?= --upgrade
# uv finds torch's CPU build where pip does: pip's find-links (a local wheel directory), else PyTorch's CPU index.
TORCH_CPU_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match)
UV_COMPILE = $(VENV)/bin/uv pip compile setup.py requirements/tools.in --python-version 3.11 $(LOCK_UPGRADE) \
	--custom-compile-command "make lock" --quiet
lock: venv
	$(UV_COMPILE) --extra gpu --extra dev -c requirements/torch-gpu.txt \
	  --python-platform x86_64-manylinux_2_28 -o requirements/gpu.lock
	@# CPU machines get the Triton that the GPU lock's torch requires: CI's AOT compile test then checks the
	@# kernels with the compiler GPU users run.
	grep '^triton==' requirements/gpu.lock > $(VENV)/triton-of-gpu-lock.txt
	$(UV_COMPILE) --extra dev -c requirements/torch-cpu.txt -c $(VENV)/triton-of-gpu-lock.txt $(TORCH_CPU_SOURCE) \
	  --python-platform x86_64-manylinux_2_28 -o requirements/cpu.lock
	@grep -E '^(torch|transformers|megatron-core|triton)==' requirements/cpu.lock requirements/gpu.lock

# Build docker/Dockerfile.cpu on this machine (podman or Docker) and run the demo, a test subset and a SIGTERM check
# inside it as non-root users; prints build time and image size (docker/README.md). Not part of `make test` or CI.
docker-test:
	TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) bash docker/test_image.sh

clean:
	rm -rf $(VENV) $(LATEST_VENV) demo_out .pytest_cache
