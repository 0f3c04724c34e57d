# One command each: `make demo`, `make test`, `make fuzz`, `make proto`, `make compat`, `make bench`.
# Every target sets up .venv from a fresh clone first (pip, from the package index).
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,train,gui
# Test processes (pytest-xdist): one per logical CPU (most tests wait on processes and
# sockets, not the CPU); PYTEST_WORKERS=0 runs them all in the pytest process.
PYTEST_WORKERS ?= logical
PYTEST_XDIST = -n $(PYTEST_WORKERS) --dist worksteal

.PHONY: setup proto compat lint test fuzz bench demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

proto: setup
	$(PY) scripts/gen_proto.py

compat: setup
	$(PY) scripts/compat.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy sleap_rtc sleap_rtc_proto

# What CI runs: every test, hypothesis with the deterministic `ci` profile (tests/conftest.py).
test: setup compat lint
	$(PY) -m pytest $(PYTEST_XDIST)

# Explores: only the hypothesis tests, random seeds and ten times the examples (`fuzz` profile).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests -m hypothesis $(PYTEST_XDIST)

bench: setup
	$(PY) -m bench

demo: setup
	$(VENV)/bin/sleap-rtc demo
