# Two commands for a new checkout: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 4001

# The other Pythons CI runs the suite on (without the browser tests): `make test-python PY=3.12`.
# Each gets a virtualenv of its own, .venv-X.Y; its interpreter is pythonX.Y if that runs, else
# pyenv's ~/.pyenv/versions/X.Y.*/bin/pythonX.Y, or the one PY_EXE names.
PY ?= 3.12
PY_VENV := .venv-$(PY)
PY_EXE ?= $(shell for p in python$(PY) $(wildcard $(HOME)/.pyenv/versions/$(PY).*/bin/python$(PY)); \
	do $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)

.PHONY: run test test-python lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

## run: start a server on ws://localhost:$(PORT) that anyone can sign in to by name (a demo)
run: $(VENV)/.installed
	@# A group for the demo's people (alice, bob, carol, dave), as in the README's picture.
	$(BIN)/python -m chatserver groups add team alice bob carol dave --name "Platform team" --allow-unknown
	$(BIN)/twistd --nodaemon --pidfile= chatserver --port $(PORT) --dev-auth --directory all

## test: lint, then the whole suite
test: $(VENV)/.installed lint
	$(BIN)/pytest

## test-python: the suite but the browser tests on another Python (make test-python PY=3.13)
test-python: $(PY_VENV)/.installed
	$(PY_VENV)/bin/python --version
	$(PY_VENV)/bin/pytest -m 'not browser'

$(PY_VENV)/.installed: pyproject.toml
	@test -n "$(PY_EXE)" || { echo "no Python $(PY) here: pyenv install $(PY), or PY_EXE=/path/to/python$(PY)"; exit 1; }
	test -x $(PY_VENV)/bin/python || $(PY_EXE) -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install --quiet --upgrade pip
	$(PY_VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

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
	rm -rf $(VENV) .venv-* build dist src/*.egg-info twisted/plugins/dropin.cache
