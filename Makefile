# Two commands matter: `make demo` serves the demo sales forecaster, `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONVEYOR := $(VENV)/bin/conveyor
STORE ?= ./models
PORT ?= 8080

.PHONY: install demo serve test test-deps test-unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	uv venv -q --allow-existing $(VENV) --python python3.11
	uv pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	@touch $@

demo: install
	@$(CONVEYOR) models show sales --store $(STORE) >/dev/null 2>&1 || \
		$(CONVEYOR) train sales --store $(STORE) --promote production
	@echo
	@echo "Try:  curl 'http://127.0.0.1:$(PORT)/predict?range=3'      (docs: http://127.0.0.1:$(PORT)/docs)"
	@echo
	$(CONVEYOR) serve sales --store $(STORE) --port $(PORT)

test: install test-deps
	$(PY) -m pytest -q

# System packages the integration tests run for real (installed as root: CI and these machines run as root)
test-deps:
	@scripts/test-deps.sh

test-unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/batch.py --workers 2

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
