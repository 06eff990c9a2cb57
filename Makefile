# Two entry points for a fresh machine: `make demo` (set up, train on synthetic scenes, show the result)
# and `make test` (set up, run the test suite). Both create the virtual environment when it is missing.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt requirements-convert.txt
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-convert.txt
	$(PY) -c "import mxnet, mxboard, gluoncv, cv2"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train_gqn.py --preset cpu-demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_step.py

clean-venv:
	rm -rf $(VENV)
