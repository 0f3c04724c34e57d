# One command each: `make demo`, `make test`, `make proto`, `make compat`, `make bench`.
# Every target sets up .venv from a fresh clone first (pip, from the package index).
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,train

.PHONY: setup proto compat lint test bench demo

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

test: setup compat lint
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

demo: setup
	$(VENV)/bin/sleap-rtc demo
