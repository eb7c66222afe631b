# The two commands of the Quick start: `make run` and `make test`. Both create .venv and
# install what they need, so a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DB     ?= webinar-flows.db

.PHONY: run test clean reliability-figures bench docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## run: validate the default config, process examples/events.jsonl into a fresh
## $(DB), print every result line and one lead's route.
run: $(VENV)/.installed
	rm -f $(DB) $(DB)-wal $(DB)-shm
	$(BIN)/webinar-flows validate
	$(BIN)/webinar-flows process examples/events.jsonl --db $(DB)
	@echo "--- route of lead-001 on webinar-2026-02 ---"
	$(BIN)/webinar-flows route --lead lead-001 --webinar webinar-2026-02 --db $(DB)

## test: the import rules of docs/architecture.md, then the whole suite.
test: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DB) $(DB)-wal $(DB)-shm .pytest_cache .hypothesis dist build

## reliability-figures: rerun the reliability tests and rewrite the figures of docs/RELIABILITY.md.
reliability-figures: $(VENV)/.installed
	$(BIN)/python bench/reliability_figures.py

## bench: engine beside the floor pipeline; prints every goal's ratio, rewrites docs/PERFORMANCE.md.
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py

## docs: build the documentation site from docs/ into site/; strict, so a broken link fails.
docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir site
