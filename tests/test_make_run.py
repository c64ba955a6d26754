"""``make run DATASET=.. FOLD=.. METHOD=..`` (the Makefile): which commands it runs for each ``finetune.common.init``,
its error when a variable is missing, and that a failing step fails it. The real recipe runs in a scratch folder
against stub ``dvc`` and ``python -m stages`` that only log their arguments (no DVC, no training; ~1 s)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN = ["DATASET=demo_oulu", "FOLD=0"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

DVC_STUB = """#!/bin/sh
echo "dvc $*" >> "$STUB_LOG"
"""
PYTHON_STUB = """#!/bin/sh
if [ "$1" = -m ]; then echo "python $*" >> "$STUB_LOG"; exit "${STUB_FAIL:-0}"; fi
exec "$REAL_PYTHON" "$@"
"""


@pytest.fixture
def make_run(tmp_path: Path):
    """``make_run(init, *variables, fail=0, run_methods=None)`` -> (completed process, logged stub commands)."""
    for name in ("Makefile", "requirements.lock", "requirements-nodeps.lock", "pyproject.toml"):
        shutil.copyfile(ROOT / name, tmp_path / name)
        os.utime(tmp_path / name, (0, 0))  # older than the stamp: make installs nothing
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("dvc", DVC_STUB), ("python", PYTHON_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    (tmp_path / "venv" / ".stamp").touch()
    metrics = tmp_path / "metrics" / "finetune" / "demo_oulu"
    metrics.mkdir(parents=True)
    (metrics / "fold0-dynamic.json").write_text(json.dumps({"last": {"epoch": 6, "fold_auc": [0.5, 0.75]}, "best": {}}))
    log = tmp_path / "stub.log"

    def run(init: str, *variables: str, fail: int = 0,
            run_methods: list[str] | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
        params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
        params["finetune"]["common"]["init"] = init
        if run_methods is not None:
            params["finetune"]["run_methods"] = run_methods
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        log.write_text("")
        env = {**os.environ, "STUB_LOG": str(log), "STUB_FAIL": str(fail), "REAL_PYTHON": sys.executable}
        proc = subprocess.run(["make", "--no-print-directory", "run", "VENV=venv", "STAMP=venv/.stamp", *variables],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        return proc, log.read_text().splitlines()

    return run


def test_a_missing_variable_is_one_error_line_and_runs_nothing(make_run) -> None:
    proc, commands = make_run("random", *RUN)
    assert proc.returncode != 0 and commands == []
    assert "make run needs DATASET, FOLD and METHOD, e.g. make run DATASET=demo_oulu FOLD=0 METHOD=dynamic" \
        in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_init_random_repros_only_align_and_folds_then_runs_the_stage_command(make_run) -> None:
    proc, commands = make_run("random", *RUN, "METHOD=dynamic")
    assert proc.returncode == 0, proc.stderr
    assert commands == ["dvc repro align@demo_oulu folds@demo_oulu",
                        "python -m stages finetune --dataset demo_oulu --fold 0 --method dynamic"]
    assert "metrics/finetune/demo_oulu/fold0-dynamic.json" in proc.stdout
    assert '"epoch": 6' in proc.stdout and '"fold_auc": [0.5, 0.75]' in proc.stdout  # the last block, lists inline


def test_init_pretrain_repros_the_stage(make_run) -> None:
    proc, commands = make_run("pretrain", *RUN, "METHOD=dynamic")
    assert proc.returncode == 0, proc.stderr
    assert commands == ["dvc repro finetune@demo_oulu-0-dynamic"]


def test_init_pretrain_outside_the_matrix_repros_pretrain_then_runs_the_stage_command(make_run) -> None:
    proc, commands = make_run("pretrain", *RUN, "METHOD=dynamic", run_methods=["static"])  # no finetune@..-dynamic
    assert proc.returncode == 0, proc.stderr
    assert commands == ["dvc repro align@demo_oulu folds@demo_oulu pretrain",
                        "python -m stages finetune --dataset demo_oulu --fold 0 --method dynamic"]


def test_a_failing_run_fails_make(make_run) -> None:
    proc, commands = make_run("random", *RUN, "METHOD=dynamic", fail=3)
    assert proc.returncode != 0
    assert "run FAILED (python -m stages finetune exited 3)" in proc.stdout
    assert "fold0-dynamic.json" not in proc.stdout
