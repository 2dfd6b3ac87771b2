# chatforge: `make demo` runs the whole pipeline on the tiny default, `make test` runs the tests.
# Both create .venv and install into it first; a second run skips the install unless
# pyproject.toml or constraints.txt changed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean-outputs

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/chatforge run

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m "slow or not slow"

bench: install
	for b in bench/*.py; do $(PYTHON) $$b || exit 1; done

clean-outputs:
	rm -rf data/raw data/clean data/rejected models checkpoints reports
