# Two entry points do all the set-up on a fresh machine with Python 3.11:
#   make repro   install what is missing into .venv, then `dvc repro` on the default params
#   make test    install what is missing into .venv (with the test tools), then run the whole test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# The GPU build of ONNX Runtime where an NVIDIA driver answers, else the CPU build (never both).
ORT_EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
export PATH := $(BIN):$(PATH)

.PHONY: install install-dev repro test ui gpu-wheels gpu-check

# torch and torchvision first, pinned: pip then takes them from this machine's wheel cache when it has them.
$(VENV)/.installed-%-$(ORT_EXTRA): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[$*,$(ORT_EXTRA)]"
	touch $@

install: $(VENV)/.installed-train-$(ORT_EXTRA)

install-dev: $(VENV)/.installed-dev-$(ORT_EXTRA)

repro: install
	dvc repro

test: install-dev
	python -m pytest

ui: install
	lungseg ui

# The GPU check (docs/operations.md): wheels built here, where PyPI is reachable; the check on the GPU host,
# whose python3 already holds torch.
gpu-wheels: install
	$(BIN)/python tools/gpu_wheels.py --out gpu-wheels

gpu-check:
	python3 tools/gpu_check.py --wheels gpu-wheels --out gpu-check --profile
