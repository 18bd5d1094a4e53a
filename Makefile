# The two commands of the README: `make run` and `make test`. Each creates
# .venv and installs chatdb into it on first use (only Python 3.11+ needed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint typecheck check clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

## run: the API with demo users on http://127.0.0.1:8000, on the embedded PostgreSQL
run: $(INSTALLED)
	$(BIN)/chatdb serve --demo

## test: the whole suite (embedded PostgreSQL, or CHATDB_TEST_DATABASE_URL when set)
test: $(INSTALLED)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(INSTALLED)
	$(BIN)/mypy src

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
