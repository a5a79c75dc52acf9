# papyrus-widgets — two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   create .venv, install, start the embedded services, index the demo gallery,
#               search it, then open JupyterLab on notebooks/quickstart.ipynb (DEMO_NO_LAB=1 stops before)
#   make test   the same install plus Chromium, then the JS and Python test suites, every test
#               included (the heavy ones marked `full` too: they fit in CI's time); CI runs this

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo gallery: a folder with references/ and hgv-epidoc/. Here the shared data; elsewhere
# point GALLERY at your own folder.
GALLERY ?= $(firstword $(wildcard ../shared/data/heidelberg) $(wildcard shared/data/heidelberg))
PYTEST_ARGS ?=

.PHONY: install system-deps static demo test test-full test-js test-py lint clean

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
	@touch $@

install: $(STAMP)

# Debian packages: Node.js (widget JS tests and packaging) and Chromium (browser tests).
system-deps:
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The widget's ESM and CSS ship inside the package: copy them from js/ (checked by the script).
static:
	@node js/build.mjs

demo: $(STAMP)
	@test -n "$(GALLERY)" || { echo "set GALLERY=/path/to/folder with references/ and hgv-epidoc/"; exit 2; }
	$(BIN)/papyrus demo --gallery "$(GALLERY)" $(if $(DEMO_NO_LAB),--no-lab,)

test-js: system-deps
	node --test js/test/

# ruff (style, imports) and mypy (types) must be clean; make test runs this first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test-py: $(STAMP) system-deps lint
	node js/build.mjs --check
	$(BIN)/python -m pytest --full $(PYTEST_ARGS)

test: test-js test-py

# The tests marked `full` (20 search processes at once) are skipped by a bare `pytest`, and run by
# `make test` (--full), since the whole suite fits comfortably in CI's time. test-full is the same
# as test; the name stays for the docs and habits that use it.
test-full: test

clean:
	rm -rf $(VENV) test-output .pytest_cache *.egg-info

# Benchmarks: every figure against its baseline in the same run, written to benchmarks/results.md
# (see benchmarks/README.md). BENCH_1M=1 adds the 1,000,000-vector kNN figure (slow, opt-in);
# BENCH_ARGS=--quick is a smoke run.
BENCH_1M ?=
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(filter-out 0 no false,$(BENCH_1M)),--million,) $(BENCH_ARGS)
