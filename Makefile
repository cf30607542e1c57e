# Two commands on a fresh machine (OS, Python 3.11+, Node 20, npm): `make demo` and `make test`.
# Every target installs what it needs first; stamps make the second run fast.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: a C compiler and Python's headers (aidp's native spawner, `setup.py`), git, GNU
# parallel (bench), bubblewrap (the sandbox's tests), and what code-server needs to build and run for
# the VS Code end-to-end test (see client-vscode/README.md).
APT_BUILD := gcc python3-dev
APT_PACKAGES := $(APT_BUILD) git parallel bubblewrap pkg-config libkrb5-dev libsecret-1-dev libx11-dev libxkbfile-dev ripgrep chromium

.PHONY: help venv apt apt-build demo docs test lint test-python test-node test-client test-e2e bench clean

help:
	@echo "make demo   - set up and run five workstreams in parallel in a throwaway repository"
	@echo "make test   - set up and run every test (lint, Python, Node client, VS Code unit + end-to-end)"
	@echo "make docs   - build the documentation site into site/ (mkdocs build --strict)"
	@echo "make bench  - benchmarks against xargs -P and GNU parallel; writes docs/benchmarks.md"

# The compiler first (order-only: checked each time, quickly, never a reason to reinstall).
$(STAMP): pyproject.toml requirements-dev.lock setup.py server/aidp/engine/_spawn.c | apt-build
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(STAMP)

# Installs the Debian packages in $(1) that are missing.
apt_install = missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

apt:
	@$(call apt_install,$(APT_PACKAGES))

apt-build:
	@$(call apt_install,$(APT_BUILD))

demo: venv
	$(VENV)/bin/aidp demo

# The site is built strictly: a broken link or a page missing from the nav fails the test.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: docs lint test-python test-node test-client test-e2e

lint: venv client-vscode/node_modules
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/ruff format --check server tests bench
	$(VENV)/bin/mypy
	cd client-vscode && npm run --silent typecheck && npm run --silent lint

test-python: venv apt
	$(VENV)/bin/pytest -q

tests/node/node_modules: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

test-node: venv tests/node/node_modules
	cd tests/node && AIDP_PYTHON=$(CURDIR)/$(PY) npm test

client-vscode/node_modules: client-vscode/package-lock.json
	cd client-vscode && npm ci --no-audit --no-fund
	touch $@

test-client: client-vscode/node_modules
	cd client-vscode && npm run --silent test:unit

test-e2e: venv apt client-vscode/node_modules
	cd client-vscode && AIDP_PYTHON=$(CURDIR)/$(PY) npm run --silent test:e2e

bench: venv apt
	$(PY) -m pip install --quiet matplotlib==3.11.2
	# compiled, as on a user's machine (PYTHONDONTWRITEBYTECODE would make every start compile aidp anew)
	$(PY) -m compileall -q server/aidp
	$(PY) -m bench

clean:
	rm -rf $(VENV) client-vscode/node_modules client-vscode/dist tests/node/node_modules test-artifacts
