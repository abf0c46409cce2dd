# taptrace: `make demo` to see it work, `make test` to check it (as root; CI runs this).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/taptrace demo

# pytest's exit status is kept: 5 (no tests collected) fails the build too.
test: setup
	@if [ -f tests/helpers/Makefile ]; then $(MAKE) --no-print-directory -C tests/helpers; fi
	$(PY) -m pytest -q tests

lint:
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff check .; \
	elif command -v ruff >/dev/null; then ruff check .; \
	else echo "lint: ruff is not installed (pip install ruff); skipped"; fi

# Overhead of `taptrace watch` on unrelated work, side by side (root).
bench: setup
	$(PY) bench/bench.py $(WHAT)
