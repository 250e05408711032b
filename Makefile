# One task runner. `make test` works on a fresh machine with Python 3.11 and pip.
#
# Every venv the tests use is installed from a lock in requirements/ (uv pip sync, hashes
# checked), so a fresh clone gets exactly the releases of the last green run; `make lock`
# moves the locks to today's newest releases, and `make test-newest` runs the suite on the
# newest releases outside the lock. pyproject.toml keeps the library's own ranges.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
LOCK   := requirements/test.txt
# The locks are for this project's machine kind: CPython 3.11 on x86_64 Linux.
UV_COMPILE = VIRTUAL_ENV=$(VENV) $(UV) pip compile -q --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu
# Install a lock into the venv $(1), then the project itself (no deps: they are in the lock;
# hatchling is in the lock too, so the build is locked as well).
define uv_sync
VIRTUAL_ENV=$(1) $(UV) pip sync -q --require-hashes $(2)
VIRTUAL_ENV=$(1) $(UV) pip install -q --no-deps --no-build-isolation -e .
endef

.PHONY: install system-deps demo test lint typecheck pytest bench bench-quick clean dashboards \
	lock test-newest

# pip installs only uv (pinned, hash-checked); uv installs everything else from the lock.
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/bootstrap.txt

$(STAMP): $(PY) $(LOCK) pyproject.toml
	$(call uv_sync,$(VENV),$(LOCK))
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

LINTED := $(wildcard src tests benchmarks examples dashboards scripts)

# ruff; the floors of STYLE.md (import-linter contracts in pyproject.toml); no import circle.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/import_cycles.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) system-deps
	$(PY) -m pytest -q --durations=25

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m benchmarks

# A smoke run of every benchmark at reduced sizes (CI): proves they run; numbers go to a temp dir
# (or to BENCH_OUT: `make bench-quick BENCH_OUT=benchmarks` rewrites benchmarks/RESULTS.md).
BENCH_OUT ?= $$(mktemp -d)
bench-quick: $(STAMP) system-deps
	$(PY) -m benchmarks --quick --out "$(BENCH_OUT)"

# Rewrite dashboards/*.json from dashboards/*.py (tests fail when the committed JSON is stale).
dashboards: $(STAMP)
	$(PY) -m dashboards.generate

clean:
	rm -rf $(VENV) $(NEWEST_VENV) $(E2E_VENV) $(COMPAT_VENV) $(COEXIST_VENV) $(FRAMEWORKS_VENV) \
		$(FRAMEWORKS_OLDEST_VENV) $(FRAMEWORKS_CREWAI_VENV) $(DEPLOY_VENV) $(PEERS_VENV) \
		$(SDK_SUITES_DIR) build dist .pytest_cache .mypy_cache .ruff_cache

# Move every lock to the newest releases the ranges allow (--refresh: no stale index cache).
# The compat locks keep their == pins of the oldest SDKs; everything around them moves.
# `make lock LOCK_FLAGS=` only adds what pyproject.toml gained, keeping every other pin.
LOCK_FLAGS ?= --upgrade --refresh
lock: $(PY)
	$(UV_COMPILE) $(LOCK_FLAGS) -o $(LOCK) pyproject.toml requirements/tools.in --extra test
	$(UV_COMPILE) -o requirements/bootstrap.txt requirements/bootstrap.in -c $(LOCK)
	$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/e2e.txt --no-emit-package llama-cpp-python \
		pyproject.toml requirements/tools.in requirements/e2e.in \
		--extra openai --extra ollama --extra testing
	$(foreach env,$(COMPAT_ENVS),$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/compat/$(env).txt \
		pyproject.toml requirements/tools.in requirements/compat/$(env).in \
		$(foreach extra,$(COMPAT_EXTRAS_$(env)),--extra $(extra)) &&) true
	$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/coexist.txt pyproject.toml requirements/tools.in \
		--extra test --extra coexist
	$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/frameworks.txt pyproject.toml requirements/tools.in \
		--extra frameworks
	# These two follow the main lock's pins (-c test.txt; the SDK release sdists it pins), so
	# they run after it, not as prerequisites (which make would run first).
	$(MAKE) --no-print-directory lock-bench-peers lock-sdk-suites

# The suite on the newest release of every dependency (SDKs, OTel, frameworks), outside the
# lock, so drift is seen the day it happens. A fresh venv each run.
NEWEST_VENV ?= .venv-newest
test-newest: $(PY) system-deps
	rm -rf $(NEWEST_VENV)
	$(UV) venv -q -p $(PYTHON) $(NEWEST_VENV)
	VIRTUAL_ENV=$(NEWEST_VENV) $(UV) pip install -q --refresh --upgrade -e '.[test]'
	# The project's own tool, not a dependency: the wheel-install tests build with the locked uv.
	VIRTUAL_ENV=$(NEWEST_VENV) $(UV) pip install -q --require-hashes -r requirements/bootstrap.txt
	@VIRTUAL_ENV=$(NEWEST_VENV) $(UV) pip list 2>/dev/null | grep -E -i \
		'^(openai|anthropic|ollama|google-genai|mistralai|opentelemetry-(api|sdk|instrumentation)|wrapt|httpx2?) '
	$(NEWEST_VENV)/bin/python -m pytest -q

# The real-model tier (tests_e2e/README.md): a llama.cpp server running a random-weight model
# written at test time, driven by the real SDKs. Its own venv, so `make test` never depends on
# it; the llama-cpp-python wheel is built once for this CPU and cached in ~/.cache/streamguard.
E2E_VENV  ?= .venv-e2e
E2E_PY    := $(E2E_VENV)/bin/python
E2E_STAMP := $(E2E_VENV)/.installed
LINTED    += $(wildcard tests_e2e)

.PHONY: e2e

$(E2E_PY): $(PY)
	$(UV) venv -q -p $(PYTHON) $(E2E_VENV)
	echo '*' > $(E2E_VENV)/.gitignore

# The lock leaves out llama-cpp-python itself: its wheel is built here for this CPU.
$(E2E_STAMP): $(E2E_PY) requirements/e2e.txt pyproject.toml scripts/llama_wheel.sh
	wheel=$$(bash scripts/llama_wheel.sh $(PYTHON)) && \
	VIRTUAL_ENV=$(E2E_VENV) $(UV) pip sync -q --require-hashes requirements/e2e.txt && \
	VIRTUAL_ENV=$(E2E_VENV) $(UV) pip install -q --no-deps "$$wheel" && \
	VIRTUAL_ENV=$(E2E_VENV) $(UV) pip install -q --no-deps --no-build-isolation -e .
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
COMPAT_TESTS := tests/providers tests/test_instrument.py tests/test_provider_telemetry.py
# One venv per lock requirements/compat/NAME.txt (compiled from NAME.in, the oldest pins, plus
# the extras named here); each runs the tests named here, selected by -k.
# The anthropic release lines (issue 15; PROVIDERS.md pitfall 10): the provider suite at both
# ends of 0.x (exact-class isinstance) and 1.x; 2.0.0 runs in httpx-0.28, the newest 2.x in
# the main venv.
ANTHROPIC_COMPAT := 0.40.0 0.125.0 1.0.0 1.17.0
COMPAT_ENVS := httpx-0.28 httpx-0.27 $(addprefix anthropic-,$(ANTHROPIC_COMPAT))
$(foreach v,$(ANTHROPIC_COMPAT),$(eval COMPAT_EXTRAS_anthropic-$(v) := anthropic testing otlp))
$(foreach v,$(ANTHROPIC_COMPAT),$(eval COMPAT_RUN_anthropic-$(v) := -p no:cacheprovider tests/providers -k anthropic))
COMPAT_EXTRAS_httpx-0.28 := test
COMPAT_EXTRAS_httpx-0.27 := openai anthropic ollama testing otlp
COMPAT_RUN_httpx-0.28 := $(COMPAT_TESTS) -k 'not openai and not ollama'
COMPAT_RUN_httpx-0.27 := $(COMPAT_TESTS) -k 'not anthropic and not gemini and not mistral'

.PHONY: compat $(addprefix compat-,$(COMPAT_ENVS))

$(COMPAT_VENV)/%/.installed: requirements/compat/%.txt pyproject.toml | $(PY)
	rm -rf $(COMPAT_VENV)/$*
	$(UV) venv -q -p $(PYTHON) $(COMPAT_VENV)/$*
	echo '*' > $(COMPAT_VENV)/.gitignore
	$(call uv_sync,$(COMPAT_VENV)/$*,$<)
	touch $@

# One explicit rule per env (make applies no pattern rule to a phony target).
define compat_rule
compat-$(1): $(COMPAT_VENV)/$(1)/.installed
	$(COMPAT_VENV)/$(1)/bin/python -m pytest -q $$(COMPAT_RUN_$(1))
endef
$(foreach env,$(COMPAT_ENVS),$(eval $(call compat_rule,$(env))))

compat: $(addprefix compat-,$(COMPAT_ENVS))

# The event-loop tier: the provider conformance suite (tests/providers) again on uvloop and
# trio, the async cases only (a sync case runs in a worker thread, on no loop). Asyncio runs
# in `make test`. google-genai and mistralai are asyncio-only SDKs: skipped on trio, and
# tests/providers/test_loops.py checks that they still fail there without StreamGuard.
.PHONY: test-loops

test-loops: $(STAMP)
	STREAMGUARD_TEST_LOOPS=uvloop,trio $(PY) -m pytest -q tests/providers

# The coexistence tier (issue 14): StreamGuard beside OpenLLMetry (openai, anthropic, ollama) and
# OTel's openai-v2, in either instrumentation order and under opentelemetry-instrument
# (tests/coexist).
# Its own venv (locked: requirements/coexist.txt): the peers register opentelemetry-instrument
# entry points, which would change what the default suite's subprocess tests run. ~45 s.
COEXIST_VENV  ?= .venv-coexist
COEXIST_STAMP := $(COEXIST_VENV)/.installed

.PHONY: coexist

$(COEXIST_STAMP): requirements/coexist.txt pyproject.toml | $(PY)
	rm -rf $(COEXIST_VENV)
	$(UV) venv -q -p $(PYTHON) $(COEXIST_VENV)
	echo '*' > $(COEXIST_VENV)/.gitignore
	$(call uv_sync,$(COEXIST_VENV),requirements/coexist.txt)
	touch $@

coexist: $(COEXIST_STAMP) system-deps
	$(COEXIST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/coexist

# The frameworks tier (tests/frameworks): LiteLLM, the OpenAI Agents SDK, LangChain, LlamaIndex
# and pydantic-ai from PyPI open the streams, against the project's upstream on loopback. Its
# own venv (locked: requirements/frameworks.txt), so `make test` never depends on the
# frameworks' (large) dependency trees. ~60 s.
FRAMEWORKS_VENV  ?= .venv-frameworks
FRAMEWORKS_STAMP := $(FRAMEWORKS_VENV)/.installed

.PHONY: frameworks

$(FRAMEWORKS_STAMP): requirements/frameworks.txt pyproject.toml | $(PY)
	rm -rf $(FRAMEWORKS_VENV)
	$(UV) venv -q -p $(PYTHON) $(FRAMEWORKS_VENV)
	echo '*' > $(FRAMEWORKS_VENV)/.gitignore
	$(call uv_sync,$(FRAMEWORKS_VENV),requirements/frameworks.txt)
	touch $@

# -p no:unraisableexception: the frameworks' process-wide cached clients leave their sockets
# to the interpreter's exit, where pytest would report them after every test passed.
frameworks: $(FRAMEWORKS_STAMP)
	$(FRAMEWORKS_VENV)/bin/python -m pytest -q -p no:cacheprovider -p no:unraisableexception \
		tests/frameworks

# --- h13: soak and deploy tiers (issue 13); the lead wires them into .ci/run ------------------
# The soak tier (tests_soak): the overload scenario with the default 30 s stall timeout (5,000
# concurrent readers, a CPU hog per core, the loop blocked 31 s), for the lag-aware stall clock
# and against the old rule (~2.5 minutes); and 20,000 streams through the openai SDK in one
# long-lived asyncio task and one trio task, side by side, against the unguarded SDK
# (tests_soak/test_long_lived_sdk.py: ~3.5 minutes on an idle 2-core machine by CPU time;
# 14-17 minutes measured here under a load average of ~10); and the same 20,000 streams on the
# engine alone, asyncio, trio and a forked worker (test_long_lived_engine.py, ~45 s).
LINTED += $(wildcard tests_soak)
.PHONY: soak

soak: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests_soak

# The deploy tier: uWSGI (fork hooks and lazy apps) and Celery's prefork pool for real
# (tests/test_uwsgi_celery.py; skipped in `make test`, where neither is installed). Its own venv:
# uwsgi is built from source with the C compiler. Locked: requirements/deploy.txt (make lock).
# ~2.5 minutes, plus ~20 s to build uwsgi the first time.
DEPLOY_VENV  ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

.PHONY: deploy lock-deploy

lock: lock-deploy
lock-deploy: $(PY)
	$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/deploy.txt pyproject.toml requirements/tools.in \
		--extra test --extra deploy

$(DEPLOY_STAMP): requirements/deploy.txt pyproject.toml | $(PY)
	rm -rf $(DEPLOY_VENV)
	$(UV) venv -q -p $(PYTHON) $(DEPLOY_VENV)
	echo '*' > $(DEPLOY_VENV)/.gitignore
	$(call uv_sync,$(DEPLOY_VENV),requirements/deploy.txt)
	touch $@

deploy: $(DEPLOY_STAMP) system-deps
	$(DEPLOY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_uwsgi_celery.py

# The frameworks tier at the oldest end of every framework range (issue 14): the same tests as
# `make frameworks`, in a venv locked from requirements/frameworks-oldest.in (== pins of each
# framework's oldest supported release; everything else the newest that fits). `make lock`
# re-locks it with the others (the prerequisite below). ~70 s.
FRAMEWORKS_OLDEST_VENV  ?= .venv-frameworks-oldest
FRAMEWORKS_OLDEST_LOCK  := requirements/frameworks-oldest.txt
FRAMEWORKS_OLDEST_STAMP := $(FRAMEWORKS_OLDEST_VENV)/.installed

.PHONY: frameworks-oldest lock-frameworks-oldest

lock: lock-frameworks-oldest
lock-frameworks-oldest: $(PY)
	$(UV_COMPILE) $(LOCK_FLAGS) -o $(FRAMEWORKS_OLDEST_LOCK) pyproject.toml requirements/tools.in \
		requirements/frameworks-oldest.in --extra frameworks

$(FRAMEWORKS_OLDEST_STAMP): $(FRAMEWORKS_OLDEST_LOCK) pyproject.toml | $(PY)
	rm -rf $(FRAMEWORKS_OLDEST_VENV)
	$(UV) venv -q -p $(PYTHON) $(FRAMEWORKS_OLDEST_VENV)
	echo '*' > $(FRAMEWORKS_OLDEST_VENV)/.gitignore
	$(call uv_sync,$(FRAMEWORKS_OLDEST_VENV),$(FRAMEWORKS_OLDEST_LOCK))
	touch $@

frameworks-oldest: $(FRAMEWORKS_OLDEST_STAMP)
	$(FRAMEWORKS_OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		-p no:unraisableexception tests/frameworks
# --- Benchmark peers (issue 16; added by h16, locked by b16; the lead wires it) -------------
# A venv with the bench-peers extra (OpenLLMetry openai/anthropic/ollama, OTel openai-v2):
# benchmarks/peers.py measures them beside StreamGuard from it (`make bench` skips the peers,
# saying so, without it). Their entry points must not reach .venv. Locked:
# requirements/bench-peers.txt, compiled from pyproject's test and bench-peers extras and held
# to requirements/test.txt's pins (requirements/bench-peers.in), so the peers run on the SDK
# and OTel releases StreamGuard is measured on. ~30 s; the lock ~10 s.
# `make lock` runs this before its own recipe moves test.txt: after a `make lock` that moved
# test.txt, `make lock-bench-peers LOCK_FLAGS=` catches up with it.
PEERS_VENV  ?= .venv-peers
PEERS_LOCK  := requirements/bench-peers.txt
PEERS_STAMP := $(PEERS_VENV)/.installed

.PHONY: bench-peers-venv lock-bench-peers

lock-bench-peers: $(PY)
	$(UV_COMPILE) $(LOCK_FLAGS) -o $(PEERS_LOCK) pyproject.toml requirements/tools.in \
		requirements/bench-peers.in --extra test --extra bench-peers

$(PEERS_STAMP): $(PEERS_LOCK) pyproject.toml | $(PY)
	rm -rf $(PEERS_VENV)
	$(UV) venv -q -p $(PYTHON) $(PEERS_VENV)
	echo '*' > $(PEERS_VENV)/.gitignore
	$(call uv_sync,$(PEERS_VENV),$(PEERS_LOCK))
	touch $@

bench-peers-venv: $(PEERS_STAMP)
# The benchmarks measure the peers beside StreamGuard in the same run (issue 16).
bench bench-quick: $(PEERS_STAMP)

# --- a15: the SDKs' own test suites, plain and guarded (issue 15); the lead wires it -----------
# The openai and anthropic release sdists (the versions requirements/test.txt pins) carry their
# tests/; each suite runs from its unpacked sdist in a venv of its own, locked from the sdist's
# uv.lock (requirements/sdk-suites/NAME.txt, hash-checked; the sdist itself is hash-checked
# too, NAME-sdist.txt), twice: plain, and with `-p streamguard.testing.sdk_suite_plugin`
# (instrument() before the suite imports the SDK). The target fails when a test that passes
# plain does not pass guarded, naming it (scripts/sdk_suites/run.py says what runs where).
# SDK_SUITES_SCOPE=streaming (default, CI) runs the streaming tests; =full the whole suites.
# `make lock-sdk-suites` rewrites the locks from the sdists (`make lock` runs it after the
# main lock, whose pins name the sdists).
SDK_SUITES       := openai anthropic
SDK_SUITES_SCOPE ?= streaming
SDK_SUITES_DIR   ?= .sdk-suites

.PHONY: sdk-suites lock-sdk-suites

lock-sdk-suites: $(PY)
	$(PYTHON) scripts/sdk_suites/lock.py $(UV) $(PYTHON) $(SDK_SUITES)

$(SDK_SUITES_DIR)/%/.installed: requirements/sdk-suites/%.txt requirements/sdk-suites/%-sdist.txt \
		pyproject.toml | $(PY)
	rm -rf $(SDK_SUITES_DIR)/$*
	mkdir -p $(SDK_SUITES_DIR)/$*/sdist
	echo '*' > $(SDK_SUITES_DIR)/.gitignore
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: --require-hashes \
		-r requirements/sdk-suites/$*-sdist.txt -d $(SDK_SUITES_DIR)/$*/sdist
	tar -xzf $(SDK_SUITES_DIR)/$*/sdist/*.tar.gz -C $(SDK_SUITES_DIR)/$*/sdist
	mv $(SDK_SUITES_DIR)/$*/sdist/$*-*/ $(SDK_SUITES_DIR)/$*/src
	$(UV) venv -q -p $(PYTHON) $(SDK_SUITES_DIR)/$*/venv
	$(call uv_sync,$(SDK_SUITES_DIR)/$*/venv,$<)
	VIRTUAL_ENV=$(SDK_SUITES_DIR)/$*/venv $(UV) pip install -q --no-deps --no-build-isolation \
		$(SDK_SUITES_DIR)/$*/src
	touch $@

sdk-suites: $(foreach sdk,$(SDK_SUITES),$(SDK_SUITES_DIR)/$(sdk)/.installed)
	$(PYTHON) scripts/sdk_suites/run.py --dir $(SDK_SUITES_DIR) --scope $(SDK_SUITES_SCOPE) \
		$(SDK_SUITES)

# The CrewAI tier (issue 14; .ci/run runs it).
# tests/frameworks/test_crewai.py with the real crewai from PyPI against the project's upstream
# on loopback. Its own venv (locked: requirements/frameworks-crewai.txt): every crewai release
# requires openai<3, and the frameworks venv's Agents SDK and pydantic-ai need openai>=3. Only
# the CrewAI tests run here (the frameworks tier skips them without crewai). ~40 s.
FRAMEWORKS_CREWAI_VENV  ?= .venv-frameworks-crewai
FRAMEWORKS_CREWAI_LOCK  := requirements/frameworks-crewai.txt
FRAMEWORKS_CREWAI_STAMP := $(FRAMEWORKS_CREWAI_VENV)/.installed

.PHONY: frameworks-crewai lock-frameworks-crewai

lock: lock-frameworks-crewai
lock-frameworks-crewai: $(PY)
	$(UV_COMPILE) $(LOCK_FLAGS) -o $(FRAMEWORKS_CREWAI_LOCK) pyproject.toml requirements/tools.in \
		--extra frameworks-crewai

$(FRAMEWORKS_CREWAI_STAMP): $(FRAMEWORKS_CREWAI_LOCK) pyproject.toml | $(PY)
	rm -rf $(FRAMEWORKS_CREWAI_VENV)
	$(UV) venv -q -p $(PYTHON) $(FRAMEWORKS_CREWAI_VENV)
	echo '*' > $(FRAMEWORKS_CREWAI_VENV)/.gitignore
	$(call uv_sync,$(FRAMEWORKS_CREWAI_VENV),$(FRAMEWORKS_CREWAI_LOCK))
	touch $@

frameworks-crewai: $(FRAMEWORKS_CREWAI_STAMP)
	$(FRAMEWORKS_CREWAI_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		-p no:unraisableexception tests/frameworks/test_crewai.py
