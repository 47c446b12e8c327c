# The two commands a stranger runs: `make demo` and `make test`.  Each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second Python environment standing in for a 32-bit Pi: tflite-runtime with numpy < 2.
DEVICE_VENV := .venv-tflite
DEVICE_STAMP := $(DEVICE_VENV)/.installed
HOME_DIR ?= $(CURDIR)/.edgenas
PYTEST_ARGS ?= --durations=15
# Three pytest-xdist workers on two cores, each taking whole test modules (module fixtures are built
# once): much of the suite waits on device processes, timeouts and daemons, and with two workers the
# cores stood idle a sixth of the time (163-169 % CPU); a third worker's tests fill it.
WORKERS ?= -n 3 --dist loadfile --no-loadscope-reorder
# The CI suite stays within its time budget; `make test-all` adds the campaign tier (tests marked
# `campaign`: measurement campaigns on the emulated boards and slow variants of CI tests, minutes on
# 2 cores).  Tests marked `quiet` judge wall-clock latency against the host's own noise floor: they
# run after the parallel pass, alone.  PYTEST_ARGS prints the slowest tests so a run shows where the
# budget goes.
TEST_SELECTION ?= not campaign
# The state a heavy command re-executes itself into (edgenas/cli/allocator.py), for the tests that
# train, export and evaluate in the pytest process itself: large activation buffers on huge pages
# instead of a page fault per 4 KB (the memory-limit training test: 60 -> 42 s).  As in the CLI,
# local devices' runners are started without it (edgenas/core/malloc.py).
# Bytecode is cached even where the environment says not to (PYTHONDONTWRITEBYTECODE): every
# worker, CLI subprocess and pass would otherwise compile edgenas and re-rewrite each test module's
# asserts (collecting the suite: 10 -> 5 s of CPU per process).
TEST_ENV := GLIBC_TUNABLES=glibc.malloc.hugetlb=1 EDGENAS_MALLOC=tuned PYTHONDONTWRITEBYTECODE=
# The quiet pass collects only the modules that mark a test quiet (collecting all took 8 s of it).
QUIET_TESTS = $(shell grep -rl 'mark\.quiet' tests)

.PHONY: demo check test test-all lint setup system-packages bench clean

setup: $(STAMP) $(DEVICE_STAMP)

# Rebuild the venv only when the pins or setup.py change; otherwise this returns at once.
$(STAMP): requirements.txt requirements-test.txt setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-test.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(DEVICE_STAMP): requirements-device-tflite.txt
	@test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-device-tflite.txt
	@touch $(DEVICE_STAMP)

# Debian packages the test fleet needs (real sshd, adb, iproute2, nftables); only as root.
system-packages:
	@bash tests/support/fleet/install-system-packages.sh

demo: setup
	$(BIN)/edgenas --home $(HOME_DIR) quickstart

# The fast tier, runnable anywhere (no root, no TensorFlow, no device process, no training): lint,
# the import contract (.importlinter: layers, no cycles) and tests/unit.
check: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests/unit

# What CI runs: every tier (unit, integration, system: the real test fleet) but the campaign tier.
test: setup system-packages
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(TEST_ENV) $(BIN)/python -m pytest -q $(WORKERS) -m "($(TEST_SELECTION)) and not quiet" $(PYTEST_ARGS)
	@# exit 5: no quiet test in this selection
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs -m "($(TEST_SELECTION)) and quiet" $(PYTEST_ARGS) \
		$(QUIET_TESTS); \
		rc=$$?; test $$rc -eq 0 -o $$rc -eq 5

test-all:
	$(MAKE) test TEST_SELECTION="campaign or not campaign"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/supernet.py

clean:
	rm -rf $(VENV) $(DEVICE_VENV) .pytest_cache .ruff_cache *.egg-info
