# The two commands of the README: `make run` (the main job) and `make test` (the suite).
# Both create .venv on first use and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench proto venv clean

$(BIN)/hsd: pyproject.toml scripts/setup-venv
	PYTHON=$(PYTHON) bash scripts/setup-venv $(VENV)
	@touch $@

venv: $(BIN)/hsd

run: venv
	$(BIN)/hsd run $(ARGS)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(ARGS)

proto: venv
	PYTHON=$(BIN)/python bash scripts/gen-proto

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
