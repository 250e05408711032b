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

# The compatibility tier (PROVIDERS.md pitfall 10): the provider tests against the OLDEST end of
# every stated SDK range (the main venv has the newest). The oldest ends need two httpx
# generations, so two venvs under .venv-compat: google-genai 2.0 and mistralai 2.0 require
# httpx>=0.28.1, while ollama 0.4 requires httpx<0.28 and openai 1.40 fails on 0.28 (it passes
# httpx's removed `proxies` argument). mistralai 2.0 also holds opentelemetry at 1.39, whose
# instrumentation package requires wrapt<2: wrapt's own oldest end, 1.16, runs there.
# Each venv runs only the providers pinned in it (-k); anthropic (on httpx2) runs in httpx-0.28.
COMPAT_VENV  ?= .venv-compat
COMPAT_NEW   := $(COMPAT_VENV)/httpx-0.28
COMPAT_OLD   := $(COMPAT_VENV)/httpx-0.27
COMPAT_TESTS := tests/providers tests/test_instrument.py tests/test_provider_telemetry.py

.PHONY: compat

$(COMPAT_NEW)/bin/python $(COMPAT_OLD)/bin/python: %/bin/python:
	$(PYTHON) -m venv $*
	echo '*' > $(COMPAT_VENV)/.gitignore
	$*/bin/python -m pip install -q --upgrade pip

$(COMPAT_NEW)/.installed: $(COMPAT_NEW)/bin/python pyproject.toml Makefile
	$(COMPAT_NEW)/bin/python -m pip install -q -e '.[test]' \
		anthropic==2.0.0 google-genai==2.0.0 mistralai==2.0.0 wrapt==1.16.0
	touch $@

$(COMPAT_OLD)/.installed: $(COMPAT_OLD)/bin/python pyproject.toml Makefile
	$(COMPAT_OLD)/bin/python -m pip install -q -e '.[openai,anthropic,ollama,testing]' \
		openai==1.40.0 ollama==0.4.0 anthropic==2.0.0 \
		'pytest>=8' 'pytest-timeout>=2.3' 'pytest-asyncio>=0.24'
	touch $@

compat: $(COMPAT_NEW)/.installed $(COMPAT_OLD)/.installed
	$(COMPAT_NEW)/bin/python -m pytest -q $(COMPAT_TESTS) tests/test_gemini_mistral.py \
		-k 'not openai and not ollama'
	$(COMPAT_OLD)/bin/python -m pytest -q $(COMPAT_TESTS) \
		-k 'not anthropic and not gemini and not mistral'

# The frameworks tier (tests/frameworks): LiteLLM, the OpenAI Agents SDK, LangChain, LlamaIndex
# and pydantic-ai from PyPI open the streams, against the project's upstream on loopback. Its
# own venv, so `make test` never depends on the frameworks' (large) dependency trees.
FRAMEWORKS_VENV  ?= .venv-frameworks
FRAMEWORKS_PY    := $(FRAMEWORKS_VENV)/bin/python
FRAMEWORKS_STAMP := $(FRAMEWORKS_VENV)/.installed

.PHONY: frameworks

$(FRAMEWORKS_PY):
	$(PYTHON) -m venv $(FRAMEWORKS_VENV)
	echo '*' > $(FRAMEWORKS_VENV)/.gitignore
	$(FRAMEWORKS_PY) -m pip install -q --upgrade pip

$(FRAMEWORKS_STAMP): $(FRAMEWORKS_PY) pyproject.toml
	$(FRAMEWORKS_PY) -m pip install -q -e '.[frameworks]'
	touch $(FRAMEWORKS_STAMP)

frameworks: $(FRAMEWORKS_STAMP)
	$(FRAMEWORKS_PY) -m pytest -q -p no:cacheprovider tests/frameworks
