# Two commands for users: `make demo` (install + run the pipeline on the embedded demo) and `make test`;
# `make run DATASET=.. FOLD=.. METHOD=..` re-runs one fine-tuning run fast (docs/training.md#one-run-fast).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-nodeps.lock pyproject.toml 2>/dev/null | md5sum | cut -c1-12)

export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo run test lock clean-venv help

help:
	@echo "make demo   install into .venv, then run the whole pipeline on the embedded demo data (dvc repro)"
	@echo "make run DATASET=demo_oulu FOLD=0 METHOD=dynamic"
	@echo "           one fine-tuning run: dvc repro of only its upstream (no pretraining unless finetune.common.init"
	@echo "           is pretrain), then the run itself; prints its metrics file and last epoch"
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
	echo "  manifests:   data/manifests/   metrics: metrics/   (dvc metrics show: the table's means per method)"; \
	echo "  aligned:     data/aligned/<dataset>/ (alignment.parquet + shards/*.tar)   folds: data/folds/<dataset>/"; \
	echo "  pretraining: data/pretrain/<dataset>/ (model.pt, steps.csv, curves.png)   metrics/pretrain/<dataset>.json"; \
	echo "  fine-tuning: data/finetune/<dataset>/fold<k>-<method>/ (model.pt, steps.csv, curves.png)   metrics/finetune/<dataset>/"; \
	echo "  report:      reports/tables.md (the paper's table, ours beside the paper's numbers; figures in reports/figures/)"; \
	echo "  MLflow runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db   (then open http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning)"; \
	echo; echo "demo targets (reports/demo_check.txt):"; cat reports/demo_check.txt; \
	if [ -s reports/cari_demo_check.txt ]; then \
		echo; echo "caricature demo targets (reports/cari_demo_check.txt; tables: reports/cari_tables.md):"; \
		cat reports/cari_demo_check.txt; fi; \
	if [ -s reports/disjoint_demo_check.txt ]; then \
		echo; echo "disjoint-datasets demo targets (reports/disjoint_demo_check.txt; tables: reports/disjoint_tables.md):"; \
		cat reports/disjoint_demo_check.txt; fi; \
	echo; echo "results table: $(CURDIR)/reports/tables.md"

# One fine-tuning run, fast (docs/training.md#one-run-fast). dvc repro of only what the run needs: align@ and folds@ of
# its dataset, and pretrain when finetune.common.init is pretrain. Then the stage itself: `dvc repro finetune@...`
# when init is pretrain and the run is a stage of the matrix (records dvc.lock), otherwise `python -m stages finetune`
# (DVC cannot skip the declared model.pt dep; `dvc status` shows such a run as modified until dvc repro/commit).
RUN_STAGE = finetune@$(DATASET)-$(FOLD)-$(METHOD)
ifneq ($(filter run,$(MAKECMDGOALS)),)
ifeq ($(and $(DATASET),$(FOLD),$(METHOD)),)
$(error make run needs DATASET, FOLD and METHOD, e.g. make run DATASET=demo_oulu FOLD=0 METHOD=dynamic)
endif
endif

run: $(STAMP)
	@set -e; export PATH="$(CURDIR)/$(BIN):$$PATH"; start=$$(date +%s); \
	fail() { status=$$?; echo; echo "run FAILED ($$1 exited $$status)"; exit $$status; }; \
	cfg=$$($(BIN)/python -c 'import yaml; p = yaml.safe_load(open("params.yaml")); f = p["finetune"]; print(f["common"]["init"], "$(DATASET)" in f["datasets"] and "$(FOLD)" in map(str, p["folds"]["run"]) and "$(METHOD)" in f["run_methods"])') || fail "reading params.yaml"; \
	init=$${cfg% *}; staged=$${cfg##* }; \
	if [ "$$init" = pretrain ] && [ "$$staged" = True ]; then \
		echo "finetune.common.init: pretrain -> dvc repro $(RUN_STAGE)"; \
		$(BIN)/dvc repro $(RUN_STAGE) || fail "dvc repro $(RUN_STAGE)"; \
	else \
		upstream="align@$(DATASET) folds@$(DATASET)"; \
		if [ "$$init" = pretrain ]; then upstream="$$upstream pretrain"; fi; \
		echo "finetune.common.init: $$init -> dvc repro $$upstream, then the run outside DVC"; \
		$(BIN)/dvc repro $$upstream || fail "dvc repro $$upstream"; \
		$(BIN)/python -m stages finetune --dataset $(DATASET) --fold $(FOLD) --method $(METHOD) || fail "python -m stages finetune"; \
	fi; \
	m=metrics/finetune/$(DATASET)/fold$(FOLD)-$(METHOD).json; \
	echo; echo "run finished in $$(($$(date +%s) - start)) s; metrics: $(CURDIR)/$$m (\"best\" is there too); its last epoch:"; \
	$(BIN)/python -c 'import json, re, sys; s = json.dumps(json.load(open(sys.argv[1]))["last"], indent=1); print(re.sub(r"\[\s+([^][]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", s))' "$$m"

# the suite on TEST_WORKERS processes (pytest-xdist); a test file runs whole on one worker (tests/conftest.py)
TEST_WORKERS ?= 2

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lock:
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --extra dev --strip-extras --allow-unsafe -o requirements.lock pyproject.toml

clean-venv:
	rm -rf $(VENV)
