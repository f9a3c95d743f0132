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

.PHONY: help install demo test test-min check lint typecheck pytest bench fakeai litellm clean

help:
	@echo "make demo   - set up and run the live demo (server + dashboard)"
	@echo "make test   - set up and run every check: ruff, mypy --strict, pytest"
	@echo "make test-min - run the tests on the lowest dependency versions allowed"
	@echo "make bench  - run the benchmarks against their baselines"
	@echo "make clean  - remove the virtualenvs and caches"

# The development tools are a PEP 735 dependency group, not a published
# extra; `pip install --group` needs pip 25.1 or newer, hence the upgrade.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "metricstream needs Python 3.11 or newer (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e '.[all,gpu]' --group dev
	touch $@

install: $(STAMP)

# The `fakeai` dependency group of pyproject.toml, in a virtualenv of its own.
$(FAKEAI_STAMP):
	test -x $(FAKEAI_VENV)/bin/python || $(PYTHON) -m venv $(FAKEAI_VENV)
	$(FAKEAI_VENV)/bin/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(FAKEAI_VENV)/bin/python -m pip install --quiet --group fakeai
	touch $@

fakeai: $(FAKEAI_STAMP)

# LiteLLM's proxy, the peer the proxy benchmark compares with. A large
# install (~750 MB) in its own virtualenv: only `make bench` needs it, never
# `make test` or CI.
LITELLM_VENV  := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed

$(LITELLM_STAMP):
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]'
	touch $@

litellm: $(LITELLM_STAMP)

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

# The lowest dependency versions pyproject.toml allows (constraints/minimum.txt),
# in a virtualenv of their own, running the tests that exercise them: the
# protocol, client, server, collector, store, terminal UI and the CLI.
MIN_VENV  := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed-min
MIN_TESTS ?= tests/protocol tests/client tests/server tests/collector tests/store \
	tests/dashboard/test_tui.py tests/test_cli.py tests/test_config.py tests/test_logging.py

$(MIN_STAMP): pyproject.toml constraints/minimum.txt
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(MIN_VENV)/bin/python -m pip install --quiet -c constraints/minimum.txt -e '.[all]' --group dev
	touch $@

test-min: $(MIN_STAMP) $(FAKEAI_STAMP)
	$(MIN_VENV)/bin/python constraints/check_installed.py constraints/minimum.txt
	METRICSTREAM_FAKEAI=$(CURDIR)/$(FAKEAI_VENV)/bin/fakeai \
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m 'not browser and not slow' \
		$(MIN_TESTS) $(PYTEST_ARGS)

bench: $(STAMP) $(LITELLM_STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(FAKEAI_VENV) $(MIN_VENV) $(LITELLM_VENV) $(UVICORN_MIN) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.* htmlcov
