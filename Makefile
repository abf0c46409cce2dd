# taptrace: `make demo` to see it work, `make test` to check it (as root; CI runs this).
VENV := .venv
PY := $(VENV)/bin/python
# Debian kernels the guest tests boot (series or releases), see tests/guest/guestvm.py.
KERNELS ?= 6.1 6.12
GUEST := /usr/bin/python3 tests/guest/guestvm.py $(foreach k,$(KERNELS),--kernel $(k))

.PHONY: setup guest-setup demo test test-guest lint bench fuzz

setup:
	@bash scripts/setup.sh

# Debian's stock kernels and their headers, QEMU, busybox: what the guest tests boot.
guest-setup:
	@$(GUEST) --install

demo: setup
	$(VENV)/bin/taptrace demo

# pytest's exit status is kept: 5 (no tests collected) fails the build too.
# tests/guest runs the smoke set inside each of $(KERNELS).
test: setup guest-setup
	@if [ -f tests/helpers/Makefile ]; then $(MAKE) --no-print-directory -C tests/helpers; fi
	$(PY) -m pytest -q tests

# The whole integration suite inside each of $(KERNELS), one boot per kernel:
# `make test-guest KERNELS=6.1 ARGS='-k scm tests/integration'`.
test-guest: setup guest-setup
	@$(MAKE) --no-print-directory -C tests/helpers
	$(GUEST) --pytest -- $(or $(ARGS),tests/integration)

lint:
	@if [ -x $(VENV)/bin/ruff ]; then $(VENV)/bin/ruff check .; \
	elif command -v ruff >/dev/null; then ruff check .; \
	else echo "lint: ruff is not installed (pip install ruff); skipped"; fi

# Overhead of `taptrace watch` on unrelated work, side by side (root).
bench: setup
	$(PY) bench/bench.py $(WHAT)

# Randomized differential testing (root): random multi-process fd programs run for
# real, the live table compared with /proc; `make fuzz SECONDS=600 SEED=42`.
# Mismatches are shrunk and written to fuzz-out/ as replayable programs.
SECONDS ?= 120
fuzz: setup
	@$(MAKE) --no-print-directory -C tests/helpers
	$(PY) tests/fuzz/fuzz.py batch --seconds $(SECONDS) $(if $(SEED),--seed $(SEED)) --shrink
