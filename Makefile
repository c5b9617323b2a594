# torchtroupe developer commands: `make demo`, `make test`, `make bench`, `make docs`.
#
# The venv is built once and rebuilt when setup.cfg changes (the stamp file).
# torch is installed first, on its own, so that the `torch>=2.4,<3` requirement is
# already met when the package and its test extra are installed: pip then keeps the
# torch build you chose (e.g. a CPU wheel) instead of pulling another one.
# Pick the torch build with TORCH and, if needed, TORCH_PIP_ARGS, e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs
PEERS_STAMP := $(VENV)/.installed-peers

# Only the directories that exist yet: ruff and mypy fail on a missing path.
LINT_PATHS := $(wildcard torchtroupe tests bench examples)
TYPECHECK_PATHS := $(wildcard torchtroupe)
BENCH_MODULES := $(basename $(notdir $(wildcard bench/transport.py bench/actors.py bench/supervision.py)))

.PHONY: all install demo test lint typecheck pytest bench docs clean

all: test

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml torchtroupe/transport/_ringcore.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) install -e '.[test]'
	touch $@

demo: $(STAMP)
	$(PY) -m torchtroupe demo

test: lint typecheck pytest docs

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)

typecheck: $(STAMP)
	$(if $(TYPECHECK_PATHS),$(VENV)/bin/mypy $(TYPECHECK_PATHS),@echo "typecheck: nothing to check yet")

pytest: $(STAMP)
	$(PY) -m pytest tests -q

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP)
	@set -e; for module in $(BENCH_MODULES); do \
		echo "== bench.$$module"; \
		$(PY) -m bench.$$module; \
	done

$(PEERS_STAMP): $(STAMP)
	$(PIP) install -e '.[peers]'
	touch $@

# torchtroupe against Pipe, Queue, collective_rpc, Ray and Monarch; rewrites the "peers" section.
bench-peers: $(PEERS_STAMP)
	$(PY) -m bench.peers

$(DOCS_STAMP): $(STAMP)
	$(PIP) install -e '.[docs]'
	touch $@

# mkdocstrings reads torchtroupe from the venv (editable install); --strict fails on any warning.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf build dist site .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
