"""The disjoint_train stage (`python -m stages disjoint_train`) on the tiny demo: its outputs (the refreshes' pseudo
labels against the hidden sidecar, the plan's scalars in history and MLflow) and resume after SIGKILL, bit-identical
to an uninterrupted run with the teacher's targets and the samplers restored.

The inputs (manifest, aligned faces, folds of the tiny demo: 3 subjects, 3 folds) are produced once per module by the
real upstream commands; stage runs are subprocesses, as under DVC. Fold 0 trains 2 subjects: one per half.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.models.checkpoint import load_model
from tests.conftest import REPO, run_upstream, sigkill_stage_when, stage_env, still_alive, tiny_params, write_params

METHOD = "sa_mtl_hard"
EPOCHS = 3
OUT = Path(f"data/disjoint/fold0-{METHOD}")
METRICS = Path(f"metrics/disjoint/fold0-{METHOD}.json")
WORK = Path("data/work/disjoint_train")
#: alternating sa_mtl_hard (pseudo labels weighted by confidence × density × distribution, q 0.8) from random weights
STAGE_PARAMS = {
    "folds.k": 3, "folds.run": [0], "align.workers": 0, "align.batch_size": 8,
    "finetune.runtime.device": "cpu", "finetune.runtime.threads": 1, "finetune.runtime.eval_batch_size": 32,
    "disjoint.common.init": "random", "disjoint.common.network.input_size": 80, "disjoint.common.batch_size": 4,
    "disjoint.common.epochs": EPOCHS, "disjoint.common.protocol.n_folds": 2,
    "disjoint.methods.sa_mtl_hard.transfer.cluster_k": 2,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    steps = [(c, "demo_oulu") for c in ("download", "manifest", "align", "folds")]
    return run_upstream(tmp_path_factory.mktemp("disjoint-inputs"), tiny_params(**STAGE_PARAMS), steps)


def _workdir(path: Path, inputs: Path) -> Path:
    """A stage folder at the repo's layout: the shared inputs linked in, its own params.yaml."""
    for sub in ("manifests", "aligned", "folds"):
        (path / "data" / sub).mkdir(parents=True)
    (path / "data/manifests/demo_oulu.parquet").symlink_to(inputs / "data/manifests/demo_oulu.parquet")
    (path / "data/aligned/demo_oulu").symlink_to(inputs / "data/aligned/demo_oulu")
    (path / "data/folds/demo_oulu").symlink_to(inputs / "data/folds/demo_oulu")
    (path / "data/protocols").symlink_to(REPO / "data/protocols")
    (path / "pipeline").symlink_to(REPO / "pipeline")  # the resume key hashes the code by repo-relative path
    write_params(path / "params.yaml", tiny_params(**STAGE_PARAMS))
    return path


def _cmd() -> list[str]:
    return [sys.executable, "-m", "stages", "--params", "params.yaml", "disjoint_train", "--fold", "0", "--method",
            METHOD]


def _run(work: Path, db: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(), cwd=work, env=stage_env(work, db), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"stage failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("disjoint-ref")
    work = _workdir(base / "repo", inputs)
    res = _run(work, base / "mlflow.db")
    return {"dir": work, "db": base / "mlflow.db", "stderr": res.stderr}


def test_the_run_writes_refreshes_against_the_hidden_labels_and_logs_the_plan(reference):
    from mlflow.tracking import MlflowClient

    out = reference["dir"] / OUT
    hidden = pd.read_parquet(out / "hidden.parquet")
    assert set(hidden["task"]) == {"identity", "expression"}
    # alternating: epochs 1 and 3 train the identity half and refresh its expression pseudo labels
    assert sorted(p.name for p in (out / "pseudo").iterdir()) == ["1.parquet", "3.parquet"]
    table = pd.read_parquet(out / "pseudo/3.parquet")
    truth = hidden[hidden["task"] == "expression"].set_index("image_id")["label"]
    assert set(table["image_id"]) == set(truth.index)
    assert (table["truth"].to_numpy() == truth.loc[table["image_id"]].to_numpy()).all()
    # hard selection at q 0.8: at most a fifth kept, strictly above the threshold
    assert 0 < table["selected"].sum() <= len(table) // 5 + 1
    history = json.loads((out / "history.json").read_text())
    plan = history[2]["plan"]
    assert plan["coverage_expression"] == pytest.approx(table["selected"].mean())
    assert plan["precision_expression"] == pytest.approx((table["pseudo"] == table["truth"]).mean())
    client = MlflowClient(f"sqlite:///{reference['db']}")
    (run,) = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    logged = client.get_metric_history(run.info.run_id, "plan_precision_expression")
    assert sorted(m.step for m in logged) == [1, 3]


def test_sigkill_then_rerun_ends_like_the_uninterrupted_run(reference, inputs, tmp_path):
    """SIGKILL after the first checkpoint: no child outlives the stage, no output is published; the rerun resumes
    with the samplers, the teacher's current targets and the refreshes written so far, and ends bit-identical."""
    work = _workdir(tmp_path / "repo", inputs)
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen(_cmd(), cwd=work, env=stage_env(work, db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    children = sigkill_stage_when(proc, lambda: any((work / WORK).glob("*/state.pt")), "its first checkpoint")
    assert proc.returncode == -signal.SIGKILL
    assert still_alive(children) == []
    assert not (work / METRICS).exists() and not (work / OUT).exists()
    state = torch.load(next((work / WORK).glob("*/state.pt")), weights_only=False)
    assert 1 <= state["epoch"] <= EPOCHS

    res = _run(work, db)
    assert f"resumed after epoch {state['epoch']}" in res.stderr
    ref = reference["dir"]
    assert json.loads((work / METRICS).read_text()) == json.loads((ref / METRICS).read_text())
    for name in ("steps.csv", "history.json"):
        assert (work / OUT / name).read_text() == (ref / OUT / name).read_text(), name
    for name in ("1.parquet", "3.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(work / OUT / "pseudo" / name),
                                      pd.read_parquet(ref / OUT / "pseudo" / name))
    a, b = load_model(work / OUT / "model.pt")[0].state_dict(), load_model(ref / OUT / "model.pt")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any((work / WORK).iterdir())  # the resume folder is cleared after success


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("all_in_one", {"disjoint.common.joint.temperature": 2.0},
     "disjoint: temperature: 2.0 has no effect with ratios: proportional"),
    ("all_in_one", {"disjoint.common.batch_size": 1}, "disjoint: batch_size: 1 is smaller than the number of sources"),
    (METHOD, {"disjoint.methods.sa_mtl_hard.transfer.cluster_k": 500},
     "disjoint: transfer.cluster_k (500) exceeds the"),
])
def test_a_plan_it_cannot_run_is_one_line_before_any_training(inputs, tmp_path, method, overrides, message):
    work = _workdir(tmp_path / "repo", inputs)
    write_params(work / "params.yaml", tiny_params(**{**STAGE_PARAMS, **overrides}))
    cmd = [*_cmd()[:-1], method]
    res = subprocess.run(cmd, cwd=work, env=stage_env(work, None), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    out = work / "data/disjoint" / f"fold0-{method}"
    assert not out.exists() and not (work / f"metrics/disjoint/fold0-{method}.json").exists()
    assert not any((work / WORK).glob("*/state.pt"))
