# rmft-api — developer entry points. Every target installs what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
LOCK    := constraints.txt
EXTRAS  := local,sandbox,report,gguf,dev

.PHONY: install test check lint typecheck demo sandbox-demo bench clean lock upgrade-check wheel-check

# torch first: installing it through a dependency would pull the multi-GB CUDA build. Everything
# else comes from the lock (constraints.txt: the exact versions the suite passes with); a changed
# lock gets a fresh venv, so nothing an older lock installed lingers.
$(STAMP): pyproject.toml $(LOCK)
	@if [ -d $(VENV) ] && ! cmp -s $(LOCK) $(VENV)/lock.txt; then \
		echo "$(LOCK) differs from the one $(VENV) was built from: rebuilding $(VENV)"; \
		rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip setuptools
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/python .ci/lock.py check $(LOCK)
	cp $(LOCK) $(VENV)/lock.txt
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check rmft_api tests benchmarks .ci setup.py
	$(BIN)/ruff format --check rmft_api tests benchmarks .ci setup.py

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

# Rewrite the lock from the current venv (after a deliberate upgrade that passes `make check`).
lock: install
	$(BIN)/python .ci/lock.py write $(LOCK)

# Drift, seen before users see it: the newest releases pyproject.toml allows, in a separate venv,
# against the whole suite. Prints what differs from the lock.
UPGRADE := .venv-upgrade
upgrade-check:
	rm -rf $(UPGRADE)
	$(PY) -m venv $(UPGRADE)
	$(UPGRADE)/bin/pip install --quiet --upgrade pip setuptools
	$(UPGRADE)/bin/pip install --quiet $(TORCH)
	# torch stays at the CPU pin: an eager upgrade would fetch the newest CUDA build (GBs).
	$(UPGRADE)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" $(TORCH)
	$(UPGRADE)/bin/python .ci/lock.py diff $(LOCK) || true
	$(UPGRADE)/bin/pytest -q

# A non-editable install as a user gets it: the wheel, into a new venv, its dependencies from the
# index under the lock; then the CLI from a directory outside the source tree.
WHEELVENV := .venv-wheel
wheel-check: install
	rm -rf $(WHEELVENV) dist
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	$(PY) -m venv $(WHEELVENV)
	$(WHEELVENV)/bin/pip install --quiet -c $(LOCK) $(TORCH)
	$(WHEELVENV)/bin/pip install --quiet -c $(LOCK) "$$(ls dist/rmft_api-*.whl)[local,sandbox,report]"
	cd "$$(mktemp -d)" && $(CURDIR)/$(WHEELVENV)/bin/rmft-api baselines --env mab --replicates 20 \
		&& $(CURDIR)/$(WHEELVENV)/bin/rmft-api prompt-preview --env mab | tail -3 \
		&& $(CURDIR)/$(WHEELVENV)/bin/python -c "import rmft_api.shipped as s; print(s.default_config())"

clean:
	rm -rf $(VENV) $(UPGRADE) $(WHEELVENV) dist build .mypy_cache .pytest_cache .ruff_cache
