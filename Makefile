# Everything bootstraps .venv itself: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Keep the project's Prefect state (SQLite, results) inside the checkout, never in ~/.prefect.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install test demo serve lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[dev,dask]'
	touch $(STAMP)

# The suite mostly waits (on batches, subprocesses, servers), so two pytest processes, each with
# its own session servers and each taking whole files, finish it in about two thirds of the time
# of one on two cores.
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(PY) -m flows.demo

serve: install
	$(PY) -m deployments.serve

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/emulator.py
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .prefect .pytest_cache build *.egg-info demo-output
