# Two commands for a newcomer: `make demo` and `make test`. Everything else is for developers.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test install system-deps lint typecheck bench simulate soak serve clean

# Everything: every extra (each provider's SDK, litellm, the server, redis) and the test and
# bench tools, for the test suite and the developer targets.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[all,test,bench]'
	touch $(STAMP)

# The demo runs the router on its core install plus the OpenAI and Anthropic SDKs, so a first
# `make demo` does not wait for litellm, the server or the test tools.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[openai,anthropic]'
	touch $(DEMO_STAMP)

install: $(STAMP)

# Debian packages the tests drive for real: redis-server (shared breaker state),
# prometheus/promtool (scrape and alert-rule tests) and chromium (the console's browser tests).
# Installed only where missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(DEMO_STAMP)
	$(VENV)/bin/gateway demo

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench
	$(VENV)/bin/mypy gateway
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy gateway

# wrk drives the HTTP servers' rows (Debian package, installed where missing). The peers
# (TensorZero, LiteLLM's proxy, Portkey) install themselves under bench/.peers/ on first run.
bench: $(STAMP)
	@command -v wrk >/dev/null || { \
	  echo "installing Debian package: wrk"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; \
	}
	$(PY) -m bench

# Seeded fault traces replayed with the old and the new resilience defaults (docs/reliability.md).
simulate: $(STAMP)
	$(PY) bench/fault_simulation.py

soak: $(STAMP)
	GATEWAY_SOAK_PROFILE=long $(PY) -m pytest -q tests/test_soak.py tests/test_soak_server.py

serve: $(STAMP)
	$(VENV)/bin/gateway serve --simulate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
