# Two commands for a fresh machine (see README):  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install is redone only when the dependency list changes; pip's cache makes a redo quick.
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
DEMO ?= demo-workspace

.PHONY: install demo test test-fast lint format typecheck check clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	$(BIN)/python -c "import torch, torchvision, timm, albumentations, optuna, sklearn, click"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The whole loop on the built-in demo competition: demo -> folds -> train -> predict -> submit --local.
demo: install
	@set -e; start=$$(date +%s); \
	rm -rf $(DEMO); \
	$(BIN)/comp demo $(DEMO); \
	$(BIN)/comp -w $(DEMO) folds; \
	$(BIN)/comp -w $(DEMO) -q train --name demo; \
	$(BIN)/comp -w $(DEMO) report demo; \
	$(BIN)/comp -w $(DEMO) predict demo; \
	$(BIN)/comp -w $(DEMO) submit $(DEMO)/submissions/demo.csv --local -m "make demo"; \
	$(BIN)/comp -w $(DEMO) submissions; \
	echo "make demo: whole loop in $$(( $$(date +%s) - start ))s"

test: install
	$(BIN)/pytest

# Everything but the end-to-end tests, for a quick loop while editing.
test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check comp tests
	$(BIN)/ruff format --check comp tests

format: install
	$(BIN)/ruff format comp tests
	$(BIN)/ruff check --fix comp tests

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache .mypy_cache .ruff_cache
