# rmft-api — developer entry points. Every target installs what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
EXTRAS  := local,sandbox,report,dev

.PHONY: install test check lint typecheck demo sandbox-demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first: installing it through a dependency would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check rmft_api tests benchmarks
	$(BIN)/ruff format --check rmft_api tests benchmarks

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

# The embedded default end to end, offline, on CPU: builds (or reuses) the bootstrap model in
# $$RMFT_CACHE (default ~/.cache/rmft-api), runs Iterative RMFT with configs/default.toml and prints
# the per-iteration table. Figures and timings: docs/demo.md.
demo: install
	$(BIN)/rmft-api bootstrap-model
	$(BIN)/rmft-api run --name demo

# The OpenAI path end to end against a loopback sandbox (no key, no cost): 2 short iterations.
# Needs the offline bootstrap model (issue 5); rmft_api/sandbox/demo.py lands with it.
sandbox-demo: install
	$(BIN)/python -m rmft_api.sandbox.demo

bench: install
	$(BIN)/python benchmarks/rollout.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
