# Two commands do all set-up on a fresh machine (README, first lines):
#   make demo   - create .venv, install hf-kd (with the vision extra, no DeepSpeed), run `hf-kd reproduce`
#   make test   - create .venv, install hf-kd[dev] (adds pytest, pytest-xdist, ruff, DeepSpeed), run the whole test suite,
#                 one worker per core (a test file stays on one worker: module fixtures are built once)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-dev demo example test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per extra: `make demo` never installs DeepSpeed (it warns about a missing accelerator on CPU).
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[vision]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed-demo

setup-dev: $(VENV)/.installed-dev

demo: setup
	$(BIN)/hf-kd reproduce --output_dir runs/reproduce

example: setup
	$(BIN)/python examples/distill_mlm.py

test: setup-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadfile tests

lint: setup-dev
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/kd_overhead.py

clean:
	rm -rf runs .pytest_cache
