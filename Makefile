# Two entry points for a fresh machine: `make demo` (the main job on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test clean

# The venv is rebuilt whenever requirements.txt changes. setuptools<81 goes in first because
# visdom 0.2.4's setup.py imports pkg_resources and is built against the venv's own setuptools.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet 'setuptools>=77.0.3,<81' wheel
	$(PIP) install --no-build-isolation -r requirements.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data runs
