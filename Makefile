# Two entry points for a fresh machine: `make demo` (set up, train on synthetic scenes, show the result)
# and `make test` (set up, run the test suite). Both create the virtual environment when it is missing.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt requirements-common.txt requirements-convert.txt
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-convert.txt
	$(PY) -c "import mxnet, mxboard, cv2"
	touch $(STAMP)

DEMO_RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	$(PY) train_gqn.py --preset cpu-demo --run-dir $(DEMO_RUN)
	$(PY) evaluate_gqn.py $(DEMO_RUN) --scenes 200 --samples 4 --json $(DEMO_RUN)/evaluation.json
	$(PY) render_gqn.py $(DEMO_RUN) --scene 0 --context 3 --zoom 3 --out-dir $(DEMO_RUN)/render
	@echo "Done. Prediction grid: $(DEMO_RUN)/val-grid-latest.png  curves: tensorboard --logdir $(DEMO_RUN)"

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_step.py

clean-venv:
	rm -rf $(VENV)
