# One task runner. `make test` works on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test lint typecheck pytest bench bench-quick clean dashboards

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Real components the tests use, from Debian, installed when missing (CI runs as root).
# Each entry is binary:package; the packages of the missing binaries are installed.
SYSTEM_DEPS := redis-server:redis-server prometheus:prometheus promtool:prometheus chromium:chromium
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null || missing="$$missing $${dep##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamguard demo

LINTED := $(wildcard src tests benchmarks examples dashboards)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) system-deps
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m benchmarks

# A smoke run of every benchmark at reduced sizes (CI): proves they run; numbers go to a temp dir.
bench-quick: $(STAMP) system-deps
	$(PY) -m benchmarks --quick --out "$$(mktemp -d)"

# Rewrite dashboards/*.json from dashboards/*.py (tests fail when the committed JSON is stale).
dashboards: $(STAMP)
	$(PY) -m dashboards.generate

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

# The real-model tier (tests_e2e/README.md): a llama.cpp server running a random-weight model
# written at test time, driven by the real SDKs. Its own venv, so `make test` never depends on
# it; the llama-cpp-python wheel is built once for this CPU and cached in ~/.cache/streamguard.
E2E_VENV  ?= .venv-e2e
E2E_PY    := $(E2E_VENV)/bin/python
E2E_STAMP := $(E2E_VENV)/.installed
LINTED    += $(wildcard tests_e2e)

.PHONY: e2e

$(E2E_PY):
	$(PYTHON) -m venv $(E2E_VENV)
	echo '*' > $(E2E_VENV)/.gitignore
	$(E2E_PY) -m pip install -q --upgrade pip

$(E2E_STAMP): $(E2E_PY) pyproject.toml scripts/llama_wheel.sh
	wheel=$$(bash scripts/llama_wheel.sh $(E2E_PY)) && \
	$(E2E_PY) -m pip install -q -e '.[openai,ollama,testing]' "$$wheel[server]" \
		'gguf>=0.10' 'numpy>=1.26' 'pytest>=8' 'pytest-timeout>=2.3' 'pytest-asyncio>=0.24'
	touch $(E2E_STAMP)

e2e: $(E2E_STAMP)
	$(E2E_PY) -m pytest -q tests_e2e
