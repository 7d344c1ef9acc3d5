# The README's two commands: `make run` (pipeline on the embedded demo data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
PORT ?= 5001
TRACKING_PORT ?= 5000

.PHONY: run test test-fast serve ui tracking-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalled only when pyproject.toml changes, so a second `make run` takes seconds.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-server: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/dvc repro

# Two or more workers: tests sharing a pipeline clone stay on one (conftest.py groups them).
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=12

test-fast: $(VENV)/.installed-dev    # what needs no training and no server: under a minute
	$(BIN)/python -m pytest -q -m "not slow"

serve: $(VENV)/.installed
	MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI) $(BIN)/mlflow models serve \
		-m "models:/face-segmenter@champion" --env-manager local -h 127.0.0.1 -p $(PORT)

ui: $(VENV)/.installed    # MLflow 3 opens on its GenAI overview: the runs are at the URL printed first
	@echo "Runs: http://127.0.0.1:5000/#/experiments/$$($(BIN)/python -c 'import mlflow; \
		e = mlflow.MlflowClient("$(MLFLOW_TRACKING_URI)").get_experiment_by_name("facemask"); \
		print(e.experiment_id if e else 0)' 2>/dev/null)?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root $(CURDIR)/mlartifacts -h 127.0.0.1 -p 5000

# A team's server: PostgreSQL (runs, registry) + `mlflow server` with proxied artifacts, state in .tracking/.
tracking-server: $(VENV)/.installed-server
	$(BIN)/python -m ops.tracking_server --state .tracking --port $(TRACKING_PORT)

clean:
	rm -rf data/extracted data/split.csv models eval export
