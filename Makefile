# Entry points for a fresh machine: `make demo` (the main job on synthetic data), `make test` and `make test-fast`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup visdom-assets visdom demo test test-fast clean cpp

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
	$(PY) tools/monitor/visdom_server.py --install-only

visdom: visdom-assets
	$(PY) tools/monitor/visdom_server.py --port 8097

# The demo: synthetic identities (regenerated when their generator changes), MobileFaceNet + ArcFace
# trained from scratch, curves in runs/demo/curves.png, and a last line of JSON with the result.
DEMO_DATA := data/synthetic
$(DEMO_DATA)/.complete: dataset/synthetic.py tools/data/make_synthetic.py | setup
	$(PY) tools/data/make_synthetic.py $(DEMO_DATA) --lfw-pairs 600 --agedb-pairs 600 --cfp-pairs 600
	touch $@

demo: setup $(DEMO_DATA)/.complete
	rm -rf runs/demo
	$(PY) train.py configs/demo.py
	$(PY) tools/monitor/plot_run.py runs/demo --json

# Every test (what CI runs), and the fast tier: every module's logic without the end-to-end runs
# marked slow (pytest.ini registers the marker).
test: setup visdom-assets
	$(PY) -m pytest -q --durations=25 tests

test-fast: setup visdom-assets
	$(PY) -m pytest -q -m "not slow" tests

# The C++ deployment tools (docs/deploy-cpp.md): build/cpp/face_embed, face_compare and
# face_benchmark, built with the venv's cmake and ninja against the libtorch inside the venv's torch
# wheel. $(CXX) is make's C++ compiler (g++ unless CXX names another); without one, one line and a
# failed target, and tests/test_cpp.py skips with the same reason.
CPP_BUILD ?= build/cpp
cpp: setup
	@command -v $(CXX) >/dev/null 2>&1 || { echo "make cpp: no C++ compiler ('$(CXX)' not found): install g++, or set CXX to a C++ compiler"; exit 1; }
	$(VENV)/bin/cmake -S deploy/cpp -B $(CPP_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	    -DCMAKE_CXX_COMPILER=$(CXX) -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	$(VENV)/bin/cmake --build $(CPP_BUILD)

clean:
	rm -rf $(VENV) data runs
