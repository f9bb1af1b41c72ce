# One task runner for everything. A newcomer needs only `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install -qq --disable-pip-version-check
BOOTSTRAP_PIP := pip==26.3
# Debian packages the tests and the audio corpus need (outage tests start their own servers; openssl makes
# the TLS test's certificate).
SYSTEM_PACKAGES := pgbouncer redis-server postgresql lame flac sox ffmpeg openssl
SYSTEM_COMMANDS := pgbouncer redis-server lame flac sox ffmpeg openssl

# Snapshots of Supabase's sources for a machine without internet: supabase-storage-<rev>.tar.gz (the Storage
# server), supabase-postgres-*-migrations.tar.gz and supabase-auth-*-migrations.tar.gz (Supabase's own SQL).
# REAL_SERVICES_PATH lists the folders that hold them (colon-separated); by default, any folder that does within
# three levels of the checkout's parent, in ~/.cache/videogen-shared/real-services, or in this CI machine's
# folder of snapshots (/work/shared/real-services), wherever the clone lies. Without them each harness fetches
# the public repositories at the pinned revisions (tests/real_storage/__init__.py, tests/fixtures/supabase_db.py);
# SUPABASE_STORAGE_SOURCE, SUPABASE_POSTGRES_SQL and SUPABASE_AUTH_SQL name one source each. Nothing in the code
# names a folder.
REAL_SERVICES_SEARCH := $(abspath ..) $(wildcard $(HOME)/.cache/videogen-shared/real-services /work/shared/real-services)
ifeq ($(origin REAL_SERVICES_PATH),undefined)
REAL_SERVICES_PATH := $(shell find $(REAL_SERVICES_SEARCH) -maxdepth 3 -name 'supabase-storage-*.tar.gz' -printf '%h:' 2>/dev/null | tr ':' '\n' | sort -u | tr '\n' ':')
endif
export REAL_SERVICES_PATH

.PHONY: help venv system-deps services print-real-services storage-server lint typecheck test test-fast consumer api-docs demo bench bench-scale mutate lock clean

help:
	@echo "make demo   run one simulated job end to end against the local services"
	@echo "make test   lint, type-check and run the whole test suite with the coverage gate"
	@echo "make bench  run the benchmarks (figures in benchmarks/README.md)"
	@echo "make consumer  the example module project on the built wheel, in a fresh venv"
	@echo "make bench-scale  the growth table at 1k, 100k and 1M jobs (a few minutes; several GB of disk)"
	@echo "make mutate mutation testing of cost_tracking.py and jobs.py (mutmut; minutes)"
	@echo "make api-docs  regenerate docs/api.md (every public name and method) after changing the public API"
	@echo "make lint | typecheck | lock | clean"

# The interpreter's own pip (23.2.1 on a fresh Python 3.11 venv) only installs the pinned, hashed pip of
# requirements-bootstrap.lock; that pip installs the lock exactly as written (--no-deps: no resolver runs, so no
# release made after the lock can change what is installed), and `pip check` proves the lock is complete.
$(STAMP): pyproject.toml requirements-dev.lock requirements-bootstrap.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements-bootstrap.lock
	$(PIP) --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip check
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Installs what is missing, only when it is missing (CI and a fresh machine of this kind run as root).
system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# Starts the machine's PostgreSQL and Redis when they are not running (never restarts or flushes them).
services:
	@bash .ci/services.sh

# The real Supabase Storage server the storage tests run against (tests/real_storage/__init__.py): Node 24 and
# `npm ci` + build, once per machine, cached under $$VIDEOGEN_CACHE_DIR (~/.cache/videogen-shared) by revision
# and lock hash; the test session then starts it on free ports with its own database and stops it by PID.
# Its source is SUPABASE_STORAGE_SOURCE if set, else a supabase-storage-<rev>.tar.gz in one of the folders of
# REAL_SERVICES_PATH (above), else the public repository at the pinned revision.

print-real-services:
	@echo "$(or $(REAL_SERVICES_PATH),<none: the public repositories>)"

storage-server: venv
	$(BIN)/python -m tests.real_storage install

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# coverage starts before pytest, so the fixtures plugin (loaded by its entry point, before any conftest) counts.
test: venv system-deps services storage-server lint typecheck
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/python -m coverage report

# The same tests without the coverage gate, lint or the Storage server's build: it still installs what they need
# (the Debian packages, the running services), so none of them is skipped for a missing tool.
test-fast: venv system-deps services storage-server
	$(BIN)/python -m pytest -x -q $(PYTEST_ARGS)

# The example module project (examples/consumer) on the built wheel, in a fresh venv: its tests, mypy, ruff.
consumer: venv services
	bash .ci/consumer.sh

# docs/api.md from the docstrings; tests/unit/test_api_reference.py fails when it lacks a public name or method.
api-docs: venv
	$(BIN)/python .ci/api_reference.py write

demo: venv services
	$(BIN)/python -m shared demo

bench: venv system-deps services
	$(BIN)/python -m benchmarks

# Separate from `make bench`: it builds a 1M-job database (benchmarks/bench_scale.py).
bench-scale: venv system-deps services
	$(BIN)/python -m benchmarks scale
# Mutation testing of the money and job modules ([tool.mutmut] in pyproject.toml: cost_tracking.py and jobs.py
# against the tests that exercise them); outside `make test`. The report counts killed mutants per module,
# leaving out those that change only a message's text, and lists the others that survived.
mutate: venv services
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python .ci/mutation_report.py

# Compiles both locks again (the existing pins are kept where pyproject.toml still admits them).
lock: venv
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu -o requirements-dev.lock
	echo "$(BOOTSTRAP_PIP)" | $(BIN)/uv pip compile - --generate-hashes --python-version 3.11 \
	  --no-header -o requirements-bootstrap.lock
	$(MAKE) venv
	$(BIN)/python .ci/check_lock.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov .data
