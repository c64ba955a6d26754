# Two commands for users: `make demo` (install + run the pipeline on the embedded demo) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-nodeps.lock pyproject.toml 2>/dev/null | md5sum | cut -c1-12)

export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test lock clean-venv help

help:
	@echo "make demo   install into .venv, then run the whole pipeline on the embedded demo data (dvc repro)"
	@echo "make test   install into .venv, then run the test suite"
	@echo "make lock   re-resolve requirements.lock from pyproject.toml (needs network to the package index)"

$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r requirements.lock -r requirements-nodeps.lock
	@# the project itself runs from the source tree: a .pth file puts the repo root on the venv's sys.path
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "dynamic_mtl_face.pth").write_text("$(CURDIR)\n")'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro || { status=$$?; echo; echo "demo FAILED (dvc repro exited $$status)"; exit $$status; }; \
	end=$$(date +%s); \
	echo; echo "demo finished in $$((end - start)) s (wall time of dvc repro)"; \
	echo "  manifests:   data/manifests/   metrics: metrics/   (dvc metrics show)"; \
	echo "  aligned:     data/aligned/<dataset>/ (alignment.parquet + shards/*.tar)   folds: data/folds/<dataset>/"; \
	echo "  pretraining: data/pretrain/<dataset>/ (model.pt, steps.csv, curves.png)   metrics/pretrain/<dataset>.json"; \
	echo "  fine-tuning: data/finetune/<dataset>/fold<k>-<method>/ (model.pt, steps.csv, curves.png)   metrics/finetune/<dataset>/"; \
	echo "  report:      reports/tables.md (the paper's table, ours beside the paper's numbers; figures in reports/figures/)"; \
	echo "  MLflow runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db   (then open http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning)"; \
	echo; echo "demo targets (reports/demo_check.txt):"; cat reports/demo_check.txt; \
	echo; echo "results table: $(CURDIR)/reports/tables.md"

# the suite on TEST_WORKERS processes (pytest-xdist); a test file runs whole on one worker (tests/conftest.py)
TEST_WORKERS ?= 2

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lock:
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --extra dev --strip-extras --allow-unsafe -o requirements.lock pyproject.toml

clean-venv:
	rm -rf $(VENV)
