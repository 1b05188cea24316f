# Transformer Tantra — two commands on a fresh machine: `make lab` and `make test`.
# Every target first makes sure .venv exists and holds the project (editable) and its
# dependencies; the stamp file makes a second run start in seconds.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.tantra-installed
# nbgrader shells out to `jupyter` and `alembic`: the venv's bin/ must come first on PATH.
RUN    := PATH="$(BIN):$$PATH" MPLBACKEND=Agg

.PHONY: setup lab test test-lib test-browser lessons bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lab: setup
	$(RUN) $(BIN)/python -m tantra_lib.lab $(LAB_ARGS)

# The whole suite (CI runs this). TANTRA_QUICK=1 shortens training cells.
test: setup
	$(RUN) $(BIN)/ruff check tantra_lib tests bench
	$(RUN) TANTRA_QUICK=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Only the reference library's parity tests (fast).
test-lib: setup
	$(RUN) $(BIN)/python -m pytest -q tests/test_lib_*.py

test-browser: setup
	$(RUN) TANTRA_QUICK=1 $(BIN)/python -m pytest -q -m browser

# Regenerate lessons/ from solutions/ with nbgrader (never edit lessons/ by hand).
lessons: setup
	$(RUN) $(BIN)/python -m tantra_lib.lessons generate

bench: setup
	$(RUN) HF_HUB_OFFLINE=1 $(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check tantra_lib tests bench

format: setup
	$(BIN)/ruff format tantra_lib tests bench

clean:
	rm -rf $(VENV) build *.egg-info gradebook.db
