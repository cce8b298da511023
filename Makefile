# Two entry points that set themselves up on a fresh machine with only Python 3.10+:
#   make demo   the brain sweep on its synthetic phantom (the embedded default)
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo trial test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# No command echo: at most 160 lines, 112 of them epoch lines when ASHA stops no trial.
demo: $(STAMP)
	@$(PY) -m orchestrator.sweep brain

trial: $(STAMP)
	$(PY) -m orchestrator.train brain --backbone baseline_cnn --resolution 64 \
		--schedule full --lr-multiplier 10 --epochs 8 --batch-size 16 \
		--phantom-per-class 100 --output-dir runs/trial

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) bench/data_cache.py
	$(PY) bench/sweep_efficiency.py
	$(PY) bench/tta.py
	$(PY) bench/data_memory.py
	$(PY) bench/bootstrap.py
	$(PY) bench/cv_cost.py
	$(PY) bench/duplicates.py

clean:
	rm -rf $(VENV) runs .pytest_cache mlflow/mlflow.db mlflow/artifacts
