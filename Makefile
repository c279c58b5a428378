# Two commands do all the set-up on a fresh clone with only python3 and pip:
#   make demo   the main job against the built-in fake service
#   make test   lint, types and every test (the slow torture tests included)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench profile instructions clean

$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c requirements-dev.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bulkrerun demo

lint: $(STAMP)
	$(BIN)/ruff check bulkrerun tests benchmarks
	$(BIN)/ruff format --check bulkrerun tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

profile: $(STAMP)
	$(BIN)/python benchmarks/profile_run.py

instructions: $(STAMP)
	$(BIN)/python benchmarks/instructions.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
