# Two commands matter: `make demo` serves the demo sales forecaster, `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONVEYOR := $(VENV)/bin/conveyor
STORE ?= ./models
PORT ?= 8080

# uv installs exactly what uv.lock holds: every machine tests the same versions. `make lock` moves them forward.
UV_VERSION := 0.13.9
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install lock demo serve test test-deps test-unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@uv --version 2>/dev/null | grep -q '^uv $(UV_VERSION)' || python3 -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'
	uv sync -q --locked --extra dev --python python3.11 --compile-bytecode
	@touch $@

# Re-resolve every dependency to its newest allowed version; commit pyproject.toml and uv.lock together.
lock:
	uv lock --upgrade

demo: install
	@$(CONVEYOR) models show sales --store $(STORE) >/dev/null 2>&1 || \
		$(CONVEYOR) train sales --store $(STORE) --promote production
	@echo
	@echo "Try:  curl 'http://127.0.0.1:$(PORT)/predict?range=3'      (docs: http://127.0.0.1:$(PORT)/docs)"
	@echo
	$(CONVEYOR) serve sales --store $(STORE) --port $(PORT)

test: install test-deps
	$(PY) -m pytest -q --durations=25

# System packages the integration tests run for real (installed as root: CI and these machines run as root)
test-deps:
	@scripts/test-deps.sh

test-unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	uv lock --check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/batch.py --workers 2

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
