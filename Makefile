# The two commands of the README: `make demo` and `make test`. Each builds .venv on first use, with the
# versions of constraints.txt (the lock: what the tests passed with; `make lock` rewrites it from .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so that no other requirement pulls a different build
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/roadseg demo --workdir demo-output

test: $(STAMP)
	bash tests/setup_system.sh
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lock: $(STAMP)
	$(BIN)/python scripts/lock.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
