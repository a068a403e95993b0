# Every target installs what is missing first (tools/setup_env.sh).
PYTHON_VENV := .venv/bin/python
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo test lint

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PYTHON_VENV) tools/run_demo.py --work-dir $(WORK_DIR)

test: setup
	$(PYTHON_VENV) -m pytest tests

lint: setup
	$(PYTHON_VENV) -m ruff check gabfusion_mm tools tests configs benchmarks
	$(PYTHON_VENV) -m ruff format --check gabfusion_mm tools tests benchmarks
