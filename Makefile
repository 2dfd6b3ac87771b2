# chatforge: `make demo` runs the whole pipeline on the tiny default, `make test` runs the tests.
# Both create .venv and install into it first; a second run skips the install unless
# pyproject.toml or constraints.txt changed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The chat page test drives Debian's chromium through Playwright (Playwright's own browser download
# needs its CDN); without it that test skips and says why.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: install demo test test-all bench clean-outputs

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
		echo "installing chromium for the chat page test (apt-get)"; \
		$(SUDO) $(APT) install chromium || { $(SUDO) apt-get update -q && $(SUDO) $(APT) install chromium; } \
		|| echo "could not install chromium: the chat page test will skip"; \
	else \
		echo "no apt-get here: install Chromium at $(CHROMIUM) for the chat page test (it skips without)"; \
	fi

demo: install
	$(VENV)/bin/chatforge run

test: install $(CHROMIUM)
	$(PYTHON) -m pytest -q

test-all: install $(CHROMIUM)
	$(PYTHON) -m pytest -q -m "slow or not slow"

BENCH_NEEDS_MODEL := bench/lm_eval_server.py bench/reply_probe.py bench/sft_lora.py

bench: install
	for b in $(filter-out $(BENCH_NEEDS_MODEL),$(wildcard bench/*.py)); do $(PYTHON) $$b || exit 1; done
	@echo "not run: $(BENCH_NEEDS_MODEL) (each needs a model directory: see its --help)"

clean-outputs:
	rm -rf data/raw data/clean data/rejected models checkpoints reports
