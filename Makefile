# convscope: `make serve` runs the dashboard, `make test` runs the whole suite.
# Both create .venv at the repository root when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: serve test lint typecheck chromium install install-test benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch/torchvision first, pinned: pip takes them from this machine's local files.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's Chromium for the browser tests (Playwright cannot download its own here).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; \
	fi

serve: $(VENV)/.installed
	$(BIN)/convscope serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check backend tests benchmarks
	$(BIN)/ruff format --check backend tests benchmarks
	$(BIN)/mypy
	PYTHONPATH=backend $(BIN)/lint-imports --no-cache

test: $(VENV)/.installed-test chromium
	$(MAKE) lint
	$(BIN)/python -m pytest

benchmarks: $(VENV)/.installed-test
	$(BIN)/python benchmarks/projection.py
	$(BIN)/python benchmarks/cone.py

clean:
	rm -rf test-artifacts .pytest_cache .mypy_cache .ruff_cache
