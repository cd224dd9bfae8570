# Two commands do all set-up on a fresh machine (README, first lines):
#   make demo   - create .venv, install hf-kd, run the main job (hf-kd reproduce, tiny preset, offline)
#   make test   - create .venv, install hf-kd with dev extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/hf-kd reproduce --output_dir runs/reproduce

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/kd_overhead.py

clean:
	rm -rf runs .pytest_cache
