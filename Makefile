# Two commands on a fresh clone: `make run` and `make test`. Everything else is a detail.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DATA ?= data
WORKERS ?= 0
PYTEST_ARGS ?=
# pytest-xdist processes of `make test`, each with its own PostgreSQL and S3. Three on two
# cores: many tests wait on subprocesses, sockets and timers (9:09 against 11:41 with two)
TEST_PROCESSES ?= 3

.PHONY: run run-prod install install-test check format lint typecheck test unit integration clean e2e

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install  ## serve on the embedded default (SQLite + files under ./data)
	$(BIN)/dicomweb-server serve --host $(HOST) --port $(PORT) --data-dir $(DATA) --workers $(WORKERS)

run-prod: install-test  ## local PostgreSQL + S3 (SeaweedFS) + the server (WORKERS=0: one per core)
	PORT=$(PORT) WORKERS=$(WORKERS) $(BIN)/python deploy/local_stack.py

format: install-test
	$(BIN)/ruff format dicomweb_server tests

check: install-test  ## formatting, lint and strict types: warnings are errors
	$(BIN)/ruff format --check dicomweb_server tests deploy conformance bench interop
	$(BIN)/ruff check dicomweb_server tests deploy conformance bench interop
	$(BIN)/mypy dicomweb_server

unit: install-test
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

integration: install-test
	$(BIN)/pytest tests/integration -q $(PYTEST_ARGS)

test: check  ## lint, types, then every test (starts PostgreSQL and S3 itself)
	$(BIN)/pytest tests conformance -q -n $(TEST_PROCESSES) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lowest

# The lowest uvicorn pyproject.toml allows, laid over the venv's: `serve` must store, find and
# retrieve with it, patches and all (serve/compat.py). Keep in step with pyproject.toml.
LOWEST_UVICORN ?= 0.52.0
.PHONY: lowest
lowest: install-test
	@test -d .lowest/uvicorn-$(LOWEST_UVICORN) || $(BIN)/python -m pip install -q --no-deps \
		--target .lowest/uvicorn-$(LOWEST_UVICORN) uvicorn==$(LOWEST_UVICORN)
	PYTHONPATH=$(abspath .lowest/uvicorn-$(LOWEST_UVICORN)) DICOMWEB_TEST_UVICORN=$(LOWEST_UVICORN) \
		$(BIN)/pytest -q tests/integration/test_serve.py tests/integration/test_cli.py \
		tests/integration/test_zerocopy.py tests/integration/test_serve_ops.py $(PYTEST_ARGS)

# The black-box PS3.18 suite over HTTP: `make conformance URL=http://host:port/dicomweb`;
# without URL it starts its own server on a free loopback port.
URL ?=
.PHONY: conformance
conformance: install-test
	DICOMWEB_CONFORMANCE_URL=$(URL) $(BIN)/pytest conformance -q $(PYTEST_ARGS)

# End to end in a real browser: the OHIF Viewer's published build (npm @ohif/app, dist/) in
# Debian's headless Chromium, driven by playwright-core, against a server it starts itself
# (studies stored through STOW). Installs what it needs: chromium with apt-get when missing,
# e2e/node_modules with npm ci. Screenshots and the server log land in e2e/results/.
# Too slow for `make test` (about two minutes); CI runs it after the test suite.
CHROMIUM ?= /usr/bin/chromium
SUDO ?= $(if $(filter 0,$(shell id -u)),,sudo)
e2e: install-test  ## OHIF Viewer in headless Chromium: study list, thumbnails, viewport pixels
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }
	cd e2e && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	cd e2e && PYTHON=$(abspath $(BIN))/python CHROMIUM=$(CHROMIUM) \
		node --test --test-concurrency=1 --test-reporter=spec ohif.test.mjs secured.test.mjs

# Interop with a real Orthanc: Debian's orthanc 1.10 and orthanc-dicomweb (installed with apt-get
# when missing) as a DICOMweb client of a server it starts itself. Orthanc's plugin stores two
# synthetic studies to us (STOW-RS), finds them (QIDO-RS), and retrieves them back (WADO-RS)
# byte for byte; `dicomweb-server import --from` pulls two more from Orthanc's own DICOMweb
# root, byte for byte. Orthanc 1.10 cannot bind one address, so the run gets a private network
# namespace with loopback only (`unshare -n`; `-rn`, a user namespace, when not root).
# Orthanc's log and ours land in interop/results/. Under 15 s once installed; CI runs it last.
ORTHANC ?= /usr/sbin/Orthanc
PRIVATE_NETWORK = unshare $(if $(filter 0,$(shell id -u)),-n,-rn) -- \
	sh -c 'ip link set lo up && exec "$$@"' sh
.PHONY: interop
interop: install-test  ## Orthanc's DICOMweb client against us: STOW, QIDO, WADO round trip
	@{ test -x $(ORTHANC) && dpkg -s orthanc-dicomweb >/dev/null 2>&1 && command -v ip >/dev/null; } || \
		{ $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb iproute2; }
	ORTHANC=$(ORTHANC) $(PRIVATE_NETWORK) $(BIN)/pytest interop -q $(PYTEST_ARGS)

clean:
	rm -rf .lowest $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Benchmarks, not part of `make test` (BENCHMARKS.md). Flags pass through BENCH_ARGS, e.g.
# `make bench BENCH_ARGS="--wait-max 1200"` waits for a quiet machine first.
BENCH_ARGS ?=
.PHONY: bench bench-scale
bench: install-test  ## ours vs Orthanc vs a replay ceiling → bench/results/latest.{json,md}
	$(BIN)/python -m bench run $(BENCH_ARGS)

bench-scale: install-test  ## 10 million instances on PostgreSQL + S3 → bench/results/scale-latest.*
	$(BIN)/python -m bench scale $(BENCH_ARGS)
