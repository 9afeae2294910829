# Two commands matter: `make etl` and `make test` (`make check`: its fast part). Each sets up
# what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.requirements-installed
# The tests in parallel processes, whole files each (tests/conftest.py says how many).
PARALLEL := -n auto --dist loadfile

.PHONY: etl test check psql stop bench venv

venv: $(READY)

# $(PYTHON) must be 3.11 or newer. A venv another Python made is made anew: venv run over it
# would keep its interpreter.
$(READY): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "make: the project needs Python 3.11 or newer, and $(PYTHON) is " + sys.version.split()[0] + ": name a newer one, e.g. make PYTHON=python3.12")'
	@if [ -e $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print(sys.version)' 2>&1)" != "$$($(PYTHON) -c 'import sys; print(sys.version)')" ]; then \
		echo "$(VENV) was made by another Python: making it anew with $(PYTHON)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	@echo "installing requirements.txt into $(VENV) (about 1 GB; a minute or more the first time)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

etl: $(READY)
	$(BIN)/python create_tables.py
	$(BIN)/python etl.py

test: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PARALLEL)

# The fast loop while developing: lint, and every test not marked slow (make test runs
# everything; docs/development.md says how long each takes).
check: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow" -q

# psql and stop need a venv, not an up-to-date one: they do not reinstall a changed
# requirements.txt first (etl and test do).
psql: | $(READY)
	$(BIN)/python db.py psql

stop: | $(READY)
	$(BIN)/python db.py stop

# The benchmark (1M events, 20k song files; 5 to 10 minutes): see bench/README.md.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--keep" or BENCH_ARGS="--growth".
bench: $(READY)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
