# Two entry points for a fresh machine: `make demo` (the main job on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup visdom-assets visdom demo test clean

# The venv is rebuilt whenever requirements.txt changes. setuptools<81 goes in first because
# visdom 0.2.4's setup.py imports pkg_resources and is built against the venv's own setuptools.
# facenet-pytorch is installed only for the MTCNN weights it ships (dataset/detect.py loads them into
# our own networks); --no-deps because its metadata pins an old torch.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet 'setuptools>=77.0.3,<81' wheel
	$(PIP) install --no-build-isolation -r requirements.txt
	$(PIP) install --no-deps 'facenet-pytorch==2.6.0'
	touch $@

setup: $(VENV)/.installed

# Visdom's dashboard files, fetched once from the npm registry (visdom's own start-up fetches them
# from CDNs, which fails offline); then `make visdom` serves the dashboard on 127.0.0.1:8097.
visdom-assets: setup
	$(PY) tools/visdom_server.py --install-only

visdom: visdom-assets
	$(PY) tools/visdom_server.py --port 8097

# The demo: synthetic identities (regenerated when their generator changes), MobileFaceNet + ArcFace
# trained from scratch, curves in runs/demo/curves.png, and a last line of JSON with the result.
DEMO_DATA := data/synthetic
$(DEMO_DATA)/.complete: dataset/synthetic.py tools/make_synthetic.py | setup
	$(PY) tools/make_synthetic.py $(DEMO_DATA) --lfw-pairs 600 --agedb-pairs 600 --cfp-pairs 600
	touch $@

demo: setup $(DEMO_DATA)/.complete
	rm -rf runs/demo
	$(PY) train.py configs/demo.py
	$(PY) tools/plot_run.py runs/demo --json

test: setup visdom-assets
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data runs
