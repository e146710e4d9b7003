# Two commands on a fresh machine:  `make demo` (install + main job), `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CLIP vocabulary comes from open_clip_torch's package data; --no-deps keeps torchvision out. triton ([kernels])
# lets the tests run the Triton kernels in its CPU interpreter.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,kernels]"
	$(BIN)/pip install -q --no-deps open_clip_torch
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/discadapt demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

test-slow: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow $(ARGS)

.PHONY: install demo test test-slow
