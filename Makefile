# Two commands for a new checkout: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 4001

.PHONY: run test lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: start a server on ws://localhost:$(PORT) that anyone can sign in to by name (a demo)
run: $(VENV)/.installed
	@# A group for the demo's people (alice, bob, carol, dave), as in the README's picture.
	$(BIN)/python -m chatserver groups add team alice bob carol dave --name "Platform team" --allow-unknown
	$(BIN)/twistd --nodaemon --pidfile= chatserver --port $(PORT) --dev-auth --directory all

## test: lint, then the whole suite
test: $(VENV)/.installed lint
	$(BIN)/pytest

## bench: the performance benchmark (about a minute; see README "Benchmark")
bench: $(VENV)/.installed
	$(BIN)/python -m chatserver.bench

## lint: ruff, mypy (strict, with the zope plugin) and the import contracts
lint: $(VENV)/.installed
	$(BIN)/ruff check src tests twisted examples
	$(BIN)/ruff format --check src tests twisted examples
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist src/*.egg-info twisted/plugins/dropin.cache
