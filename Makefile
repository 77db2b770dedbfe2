# Two entry points for a fresh machine: `make demo` (set-up + the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/leadscore demo

# Debian's Chromium for the browser tests of /ui (tests/integration/test_ui_browser.py), installed
# non-interactively when missing (a fresh CI machine, as root)
chromium:
	test -x /usr/bin/chromium || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

# every tier (tests/unit, data, model, integration), the services and slow tests included
test: $(STAMP) chromium
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi; \
	exit $$rc

# the inner loop: unit, data and model tiers without the slow tests (no services, no serving)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not services" tests/unit tests/data tests/model; \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) data/* reports/* mlruns/* feature_repo/data
	touch data/.gitkeep reports/.gitkeep mlruns/.gitkeep
