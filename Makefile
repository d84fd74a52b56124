# The study kit's jobs. `make book` and `make test` are the two that matter; both set up
# .venv first (once: a second run installs nothing).
SHELL        := /bin/bash
PYTHON       ?= $(shell command -v python3.11 || command -v python3)
VENV         := .venv
BIN          := $(VENV)/bin
STAMP        := $(VENV)/.kit-installed
WIDGETS_JS   := book/_static/widgets/embed-amd.js
WIDGET_FONTS := book/_static/widgets/fonts.txt
MATHJAX_JS   := book/_vendor/mathjax/tex-mml-chtml.js
KIT_PROFILE  ?= auto
export KIT_PROFILE
# oneDNN's AVX-512 kernels (torch 2.14.1, seen on AMD EPYC / Zen 4) corrupt the heap in the
# weight gradient of a 1x1 stride-2 convolution on a channels_last map with <= 12 channels
# (the backbones' downsampling shortcuts at the smoke widths): the process dies with
# "double free or corruption". Capping oneDNN at AVX2 avoids those kernels; it is a no-op on
# CPUs without AVX-512. Override with ONEDNN_MAX_CPU_ISA=ALL make ... to test a newer torch.
export ONEDNN_MAX_CPU_ISA ?= AVX2

.PHONY: setup book test lab study bench check-book clean-book help
.DEFAULT_GOAL := help

help:
	@echo "make book   - set up .venv, re-execute stale notebooks, build the HTML book"
	@echo "make test   - set up .venv, unit tests + every notebook under nbval at the smoke profile"
	@echo "make lab    - JupyterLab on the notebooks"
	@echo "make study  - execute every notebook at the gpu profile and record results"
	@echo "make bench  - run the benchmark scripts"
	@echo "make check-book - open every built page in headless Chromium; fail on what a reader would meet"

setup: $(STAMP)

# Installs the exact pins from the lock file, then the kit itself (editable, no deps).
# The stamp is newer than both inputs after a successful install, so a second run does nothing.
$(STAMP): requirements-lock.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The widget JavaScript the static book needs, vendored from the npm registry (no CDN at read time).
$(WIDGETS_JS):
	@mkdir -p .cache/npm book/_static/widgets
	npm install --silent --no-audit --no-fund --prefix .cache/npm @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4
	cp .cache/npm/node_modules/requirejs/require.js book/_static/widgets/require.js
	cp .cache/npm/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js $(WIDGETS_JS)

# The font files the bundle's widget CSS names (Font Awesome 4, for the widgets' icons), from the
# same package. book/_static/kit-book.js makes the bundle look for them in _static/widgets/
# (else it asks next to each page). fonts.txt lists what was copied.
$(WIDGET_FONTS): $(WIDGETS_JS)
	@test -d .cache/npm/node_modules/@jupyter-widgets/html-manager || npm install --silent --no-audit --no-fund \
		--prefix .cache/npm @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4
	cd .cache/npm/node_modules/@jupyter-widgets/html-manager/dist && cp *.woff2 *.woff *.ttf $(CURDIR)/book/_static/widgets/ \
		&& ls *.woff2 *.woff *.ttf > $(CURDIR)/$(WIDGET_FONTS)

# MathJax for the book's equations, vendored the same way (Sphinx would load it from a CDN).
# Only what the tex-mml-chtml bundle loads: its input extensions, output fonts and menu parts.
# It goes to book/_vendor (copied as is by html_extra_path), not _static, where Jupyter Book
# would add each of its scripts to every page.
$(MATHJAX_JS):
	@mkdir -p .cache/npm book/_vendor/mathjax
	npm install --silent --no-audit --no-fund --prefix .cache/npm mathjax@3.2.2
	cd .cache/npm/node_modules/mathjax/es5 && cp -r tex-mml-chtml.js input output a11y ui adaptors $(CURDIR)/book/_vendor/mathjax/

book: $(STAMP) $(WIDGETS_JS) $(WIDGET_FONTS) $(MATHJAX_JS)
	$(BIN)/python -m kit.book.execute --profile $(KIT_PROFILE)
	$(BIN)/python -m kit.book.pages
	$(BIN)/jupyter-book build book/_generated --path-output book --quiet
	@echo "Book: $(CURDIR)/book/_build/html/index.html"

test: $(STAMP)
	KIT_PROFILE=smoke $(BIN)/python -m pytest tests notebooks --nbval-lax -q

# Needs Chromium (apt-get install chromium). One line per page; screenshots in book/_build/shots.
check-book: $(STAMP)
	$(BIN)/python -m kit.book.check_pages --shots book/_build/shots

lab: $(STAMP)
	$(BIN)/jupyter lab --allow-root --notebook-dir=notebooks

study: $(STAMP)
	KIT_PROFILE=gpu $(BIN)/python -m kit.book.execute --profile gpu --all

bench: $(STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-book:
	rm -rf book/_build book/_generated
