# Sandbar: `make run` starts it, `make test` tests it. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements/dev.txt
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links

.PHONY: run test test-fast lint bench images image install lock clean

install: $(STAMP)

# Exactly the versions the tests passed with (requirements/dev.txt, hashes checked), then
# Sandbar itself with no further dependency.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# Re-resolve the lock files from pyproject.toml, keeping every pin that still fits
# (LOCK_ARGS=--upgrade, or --upgrade-package NAME, moves them on); the runtime lock
# takes the dev lock's versions.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4,<8'
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) --extra dev \
		$(LOCK_ARGS) -o $(LOCK) pyproject.toml
	cp $(LOCK) requirements/runtime.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) \
		-o requirements/runtime.txt pyproject.toml

run: $(STAMP)
	$(BIN)/sandbar serve $(ARGS)

# Bytecode: where PYTHONDONTWRITEBYTECODE is set (as on the shared machine), every server and
# CLI run a test starts would compile Sandbar's modules anew, and every worker rewrite
# the asserts of the test modules and of pytest's plugins (some 4 s of CPU a worker): the
# tests keep their bytecode under the venv (PYTHONPYCACHEPREFIX), out of the tree.
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache
test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Every tier but those that need a container engine or a browser (tests/conftest.py), on
# as many workers as the machine has cores (pytest-xdist; each worker makes its own
# databases and servers), with fewer examples for the costliest property tests
# (SANDBAR_TEST_QUICK: tests/conftest.py). Workers take tests in runs of one file where
# they can, so that a module's server is started once, and steal when one is idle.
TEST_WORKERS ?= auto
test-fast: $(STAMP)
	$(TEST_ENV) SANDBAR_TEST_QUICK=1 $(BIN)/python -m pytest -m "not containers and not browser" \
		-n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# ruff, then mypy (strict for domain/, application/ and projections/: pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py

images:
	images/build.sh all

# The image of Sandbar itself and PostgreSQL's for compose.yaml, built locally (no registry).
image:
	images/sandbar/build.sh all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
