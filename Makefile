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

# $(call need_disk,DIR,GB,WHAT): stop with a plain message, instead of pip's "No space left on
# device" halfway through, when DIR's filesystem has less than GB free. DISK_CHECK=0 skips it.
need_disk = [ "$(DISK_CHECK)" = 0 ] || { free=$$(df -Pk "$(1)" | awk 'NR==2 {print int($$4 / 1048576)}'); \
  [ "$$free" -ge $(2) ] || { echo "make: $(2) GB free needed in $(1) for $(3); $$free GB free there." \
  "Free some space (old venvs, /tmp/pytest-of-$$(id -un)) or set DISK_CHECK=0 to try anyway." >&2; exit 1; }; }

.PHONY: install system-deps static demo test test-full test-js test-py lint clean

# The widget's ESM: js/src/*.js bundled by esbuild (pinned in js/package-lock.json, installed by
# npm ci into js/node_modules) into papyrus_widgets/static/widget.js, which is git-ignored and
# shipped in the wheel and sdist. The CSS (papyrus_widgets/static/widget.css) needs no build.
WIDGET_JS := papyrus_widgets/static/widget.js
ESBUILD   := js/node_modules/esbuild/package.json

$(ESBUILD): js/package.json js/package-lock.json | system-deps
	cd js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WIDGET_JS): $(ESBUILD) js/build.mjs $(wildcard js/src/*.js)
	node js/build.mjs

$(STAMP): pyproject.toml requirements/constraints.txt $(WIDGET_JS)
	@test -x $(BIN)/python || { $(call need_disk,.,7,the venv (a CUDA build of torch from PyPI)) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
	@touch $@

install: $(STAMP)

# Debian packages: Node.js and npm (the widget's build and JS tests) and Chromium (browser tests).
system-deps:
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Build the widget's ESM (also done by install and the tests when js/src/ changed).
static: $(WIDGET_JS)

demo: $(STAMP)
	@test -n "$(GALLERY)" || { echo "set GALLERY=/path/to/folder with references/ and hgv-epidoc/"; exit 2; }
	$(BIN)/papyrus demo --gallery "$(GALLERY)" $(if $(DEMO_NO_LAB),--no-lab,)

test-js: system-deps $(WIDGET_JS)
	node --test js/test/

# ruff (style, imports) and mypy (types) must be clean; make test runs this first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test-py: $(STAMP) system-deps lint $(WIDGET_JS)
	@$(call need_disk,$${TMPDIR:-/tmp},8,the tests (the Binder test builds a second venv there; all is removed after))
	$(BIN)/python -m pytest --full $(PYTEST_ARGS)

test: test-js test-py

# The tests marked `full` (20 search processes at once) are skipped by a bare `pytest`, and run by
# `make test` (--full), since the whole suite fits comfortably in CI's time. test-full is the same
# as test; the name stays for the docs and habits that use it.
test-full: test

clean:
	rm -rf $(VENV) test-output .pytest_cache *.egg-info js/node_modules $(WIDGET_JS)

# Benchmarks: every figure against its baseline in the same run, written to benchmarks/results.md
# (see benchmarks/README.md). BENCH_1M=1 adds the 1,000,000-vector kNN figure (slow, opt-in);
# BENCH_ARGS=--quick is a smoke run.
BENCH_1M ?=
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(filter-out 0 no false,$(BENCH_1M)),--million,) $(BENCH_ARGS)
