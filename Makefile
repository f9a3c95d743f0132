# Every target creates .venv on first use and installs the project into it, so
# a fresh clone needs nothing but Python 3.11+ and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# The real FakeAI server lives in its own virtualenv: its pins must never
# change the versions metricstream is tested with.
FAKEAI_VENV  := .venv-fakeai
FAKEAI_STAMP := $(FAKEAI_VENV)/.installed
# The lowest uvicorn pyproject.toml allows, alone in a directory put ahead of
# the venv's site-packages: the direct-write contract is tested on it too.
UVICORN_MIN       := .uvicorn-min
UVICORN_MIN_STAMP := $(UVICORN_MIN)/.installed

HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: help install demo test check lint typecheck pytest bench fakeai clean

help:
	@echo "make demo   - set up and run the live demo (server + dashboard)"
	@echo "make test   - set up and run every check: ruff, mypy --strict, pytest"
	@echo "make bench  - run the benchmarks against their baselines"
	@echo "make clean  - remove the virtualenvs and caches"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "metricstream needs Python 3.11 or newer (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# fakeai 0.3.2 imports Pillow without declaring it.
$(FAKEAI_STAMP):
	test -x $(FAKEAI_VENV)/bin/python || $(PYTHON) -m venv $(FAKEAI_VENV)
	$(FAKEAI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FAKEAI_VENV)/bin/python -m pip install --quiet 'fakeai==0.3.2' pillow
	touch $@

fakeai: $(FAKEAI_STAMP)

$(UVICORN_MIN_STAMP): $(STAMP) pyproject.toml
	rm -rf $(UVICORN_MIN)
	$(BIN)/python -m pip install --quiet --no-deps --target $(UVICORN_MIN) \
		"uvicorn==$$($(BIN)/python tests/server/uvicorn_contract.py --lowest)"
	touch $@

# A demo server with generated traffic, and the terminal dashboard on it (the
# web dashboard is served too). Without a terminal it prints summary lines.
demo: $(STAMP)
	$(BIN)/metricstream demo --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(FAKEAI_STAMP) $(UVICORN_MIN_STAMP)
	METRICSTREAM_FAKEAI=$(CURDIR)/$(FAKEAI_VENV)/bin/fakeai \
	METRICSTREAM_UVICORN_MIN=$(CURDIR)/$(UVICORN_MIN) \
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

check: lint typecheck

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(FAKEAI_VENV) $(UVICORN_MIN) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.* htmlcov
