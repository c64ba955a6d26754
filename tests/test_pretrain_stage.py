"""The pretrain stage (`python -m stages pretrain`) on the tiny demo: outputs, MLflow curves, resume after SIGKILL,
torchrun with two gloo processes, bad inputs, and fine-tuning from its checkpoint.

Inputs (both demo datasets generated, listed, aligned; demo_oulu's folds) come from the real upstream commands, once
per module. Stage runs are subprocesses, as under DVC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.models.checkpoint import load_model
from tests.conftest import REPO, descendants, run_upstream, stage_env, still_alive, tiny_params, write_params

OUT = Path("data/pretrain/demo_webface")
METRICS = Path("metrics/pretrain/demo_webface.json")
STEPS = 4
STAGE_PARAMS = {"folds.k": 3, "folds.run": [0], "align.workers": 0, "align.batch_size": 8,
                "finetune.runtime.device": "cpu", "finetune.runtime.threads": 1, "finetune.runtime.eval_batch_size": 32,
                "finetune.common.batch_size": 4, "finetune.common.epoch_size": 1, "finetune.common.epochs": 1}


def _params(**overrides) -> dict:
    return tiny_params(**{**STAGE_PARAMS, **overrides})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    steps = [(c, n) for n in ("demo_webface", "demo_oulu") for c in ("download", "manifest", "align")]
    return run_upstream(tmp_path_factory.mktemp("pretrain-inputs"), _params(), [*steps, ("folds", "demo_oulu")])


def _workdir(path: Path, inputs: Path, params: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for sub in ("data/manifests", "data/aligned", "data/folds"):
        (path / sub).mkdir(parents=True)
        for f in (inputs / sub).iterdir():
            (path / sub / f.name).symlink_to(f)
    (path / "data/protocols").symlink_to(REPO / "data/protocols")
    (path / "pipeline").symlink_to(REPO / "pipeline")  # the resume key hashes the code by repo-relative path
    write_params(path / "params.yaml", params)
    return path


def _env(workdir: Path, mlflow_db: Path | None) -> dict[str, str]:
    return stage_env(workdir, mlflow_db, OMP_NUM_THREADS="1")


def _run(workdir: Path, mlflow_db: Path | None = None, args: tuple[str, ...] = ("pretrain",),
         ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "stages", "--params", "params.yaml", *args], cwd=workdir,
                         env=_env(workdir, mlflow_db), capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, f"stage failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("pretrain-ref")
    work = _workdir(base / "repo", inputs, _params())
    res = _run(work, base / "mlflow.db")
    return {"dir": work, "db": base / "mlflow.db", "stdout": res.stdout}


def test_stage_writes_the_checkpoint_curves_and_metrics(reference):
    work = reference["dir"]
    assert sorted(p.name for p in (work / OUT).iterdir()) == ["curves.png", "history.json", "model.pt", "steps.csv"]
    model, meta = load_model(work / OUT / "model.pt")
    assert [(h.name, h.n_classes) for h in model.config.heads] == [("identity", 3)]  # 3 tiny demo identities
    assert meta["stage"] == "pretrain" and meta["steps"] == STEPS
    rows = (work / OUT / "steps.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["step", "epoch", "lr", "loss"] and len(rows) == 1 + STEPS
    lrs = [float(r.split(",")[2]) for r in rows[1:]]
    schedule = _params()["pretrain"]["train"]["schedule"]
    lr, decay = schedule["lr"], schedule["decay"]
    assert schedule["boundaries"] == [3]
    assert lrs == pytest.approx([lr, lr, lr, lr * decay])  # boundary 3: step index 3 is the 4th step
    history = json.loads((work / OUT / "history.json").read_text())
    assert [e["step"] for e in history] == [2, 4]
    metrics = json.loads((work / METRICS).read_text())
    assert metrics["steps"] == STEPS and metrics["processes"] == 1 and metrics["data"]["faces"] == 9
    assert metrics["data"]["identities"] == 3 and metrics["verification_dataset"] == "demo_oulu"
    assert metrics["verification"]["last"] == history[-1]
    assert metrics["data"]["verification_pairs"] > 0
    assert not any((work / "data/work/pretrain").iterdir())  # checkpoints cleared after the finished run
    assert f"-> {OUT}" in reference["stdout"]


def test_mlflow_run_has_loss_and_verification_curves(reference):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{reference['db']}")
    (run,) = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    assert run.info.run_name == "pretrain@demo_webface" and run.info.status == "FINISHED"  # "pretrain" under DVC
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "verification_accuracy")) == [2, 4]
    assert run.data.params["pretrain.train.steps"] == str(STEPS)
    assert "images_per_second" in run.data.metrics and "data_wait_fraction" in run.data.metrics


def test_sigkill_then_rerun_ends_as_the_uninterrupted_run(inputs, reference, tmp_path):
    """Kill the stage process alone after its first checkpoint: its DataLoader worker dies with it; the rerun
    resumes and ends with the same weights, rows and metrics."""
    steps = 8
    params = _params(**{"pretrain.runtime.workers": 1, "pretrain.train.steps": steps})
    ref = _workdir(tmp_path / "ref", inputs, params)
    _run(ref)
    work = _workdir(tmp_path / "killed", inputs, params)
    proc = subprocess.Popen([sys.executable, "-m", "stages", "--params", "params.yaml", "pretrain"], cwd=work,
                            env=_env(work, None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list((work / "data/work/pretrain").glob("*/state.pt")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    workers = descendants(proc.pid) if proc.poll() is None else []
    os.kill(proc.pid, signal.SIGKILL)  # the stage only, not its process group
    proc.wait()
    assert still_alive(workers) == []
    states = list((work / "data/work/pretrain").glob("*/state.pt"))
    killed_at = torch.load(states[0], weights_only=False)["step"] if states else steps
    assert len(workers) == 1 or killed_at == steps  # killed while its worker ran, unless it had already ended
    res = _run(work)
    if killed_at < steps:
        assert f"resumed after step {killed_at}" in res.stderr
    a, b = load_model(ref / OUT / "model.pt")[0].state_dict(), load_model(work / OUT / "model.pt")[0].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / OUT / "steps.csv").read_text() == (work / OUT / "steps.csv").read_text()
    ma, mb = (json.loads((d / METRICS).read_text()) for d in (ref, work))
    assert ma == mb


@pytest.mark.parametrize(("at", "kept"), [(2, None), (4, 2)], ids=["before-a-checkpoint", "after-one"])
def test_a_non_finite_stop_names_the_state_it_keeps_or_says_there_is_none(inputs, tmp_path, monkeypatch, no_mlflow,
                                                                          at, kept):
    """Verification diverges at step ``at`` (the evaluation of step 2 comes before its checkpoint): the one-line
    error names the state file that exists, or says that none was written."""
    from typer.testing import CliRunner

    import pipeline.training.pretrain as loop
    from pipeline.training.step import NonFiniteError
    from stages.app import app

    work = _workdir(tmp_path / "repo", inputs, _params())
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    evaluate = loop._evaluate

    def diverges(spec, model, verify, images, step):
        if step == at:
            raise NonFiniteError(f"non-finite embeddings when evaluating step {step}: the last steps diverged")
        return evaluate(spec, model, verify, images, step)

    monkeypatch.setattr(loop, "_evaluate", diverges)
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["--params", "params.yaml", "pretrain"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: non-finite embeddings when evaluating step {at}"), line
    (state,) = (work / "data/work/pretrain").glob("*/state.pt") if kept else [None]
    if kept:
        assert f"the state of step {kept} is kept in {state.relative_to(work)} " in line
        assert torch.load(state, weights_only=False)["step"] == kept
    else:
        assert "no checkpoint was written (none is kept)" in line
        assert not list((work / "data/work/pretrain").glob("*/state.pt"))


def test_two_processes_run_under_torchrun(inputs, tmp_path):
    work = _workdir(tmp_path / "repo", inputs, _params(**{"pretrain.train.processes": 2}))
    res = _run(work)
    metrics = json.loads((work / METRICS).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == STEPS
    assert "on 2 x cpu" in res.stdout
    assert load_model(work / OUT / "model.pt")[0].config.heads[0].n_classes == 3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"pretrain.train.batch_size": 16}, "9 aligned faces are fewer than one batch"),
    ({"pretrain.train.processes": 3}, "batch_size 4 must be a multiple of processes 3"),
    ({"pretrain.train.init": "missing.pt"}, "pretrain.train.init: checkpoint not found: missing.pt"),
    ({"pretrain.train.init": "junk.pt"}, "pretrain.train.init: junk.pt is not a model checkpoint"),
    ({"pretrain.train.verification.folds": [5]}, "pretrain.train.verification.folds"),
    ({"pretrain.train.dataset": "nope"}, "pretrain.train.dataset: unknown dataset 'nope'"),
    ({"pretrain.train.center_loss.form": "wen"},
     "pretrain.train.center_loss.form: Input should be 'metrics_loss' or 'facenet'"),
])
def test_bad_params_are_one_line_errors(inputs, tmp_path, overrides, message):
    work = _workdir(tmp_path / "repo", inputs, _params(**overrides))
    (work / "junk.pt").write_bytes(b"not a checkpoint")
    res = _run(work, ok=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (work / OUT).exists() and not (work / METRICS).exists()


def test_missing_aligned_data_is_a_clear_error(inputs, tmp_path):
    work = _workdir(tmp_path / "repo", inputs, _params())
    (work / "data/aligned/demo_webface").unlink()
    res = _run(work, ok=False)
    assert "data/aligned/demo_webface not found: run the upstream stages first" in res.stderr


def test_finetune_starts_from_the_pretrain_checkpoint_and_the_pretrained_method_only_evaluates(inputs, reference,
                                                                                              tmp_path):
    work = _workdir(tmp_path / "repo", inputs, _params())
    res = _run(work, args=("finetune", "--dataset", "demo_oulu", "--fold", "0", "--method", "pretrained"), ok=False)
    assert "finetune.common.init: checkpoint not found: data/pretrain/demo_webface/model.pt (run the pretrain " \
           "stage" in res.stderr
    (work / OUT).parent.mkdir(parents=True)
    (work / OUT).symlink_to(reference["dir"] / OUT)
    _run(work, args=("finetune", "--dataset", "demo_oulu", "--fold", "0", "--method", "pretrained"))
    metrics = json.loads((work / "metrics/finetune/demo_oulu/fold0-pretrained.json").read_text())
    assert metrics["epochs"] == 0 and metrics["last"]["epoch"] == 0
    assert "expression_accuracy" not in metrics["last"] and set(metrics["best"]) == {"selected_on", "verification"}
    # the evaluation is the pretrained model's own: its embeddings give these pair distances
    fine, _ = load_model(work / "data/finetune/demo_oulu/fold0-pretrained/model.pt")
    pre, _ = load_model(reference["dir"] / OUT / "model.pt")
    for k, v in pre.state_dict().items():
        if k.startswith("trunk.") or (k.startswith("branches.identity.") and ".logits." not in k):
            assert torch.equal(fine.state_dict()[k], v), k
    write_params(work / "params.yaml", _params(**{"finetune.common.init": "random"}))
    res = _run(work, args=("finetune", "--dataset", "demo_oulu", "--fold", "0", "--method", "pretrained"), ok=False)
    assert "epochs is 0 (evaluate the initial model) but finetune.common.init is random" in res.stderr


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_a_corrupt_shard_is_a_one_line_error_wherever_it_is_decoded(inputs, tmp_path, decode):
    import shutil

    import pandas as pd

    work = _workdir(tmp_path / "repo", inputs,
                    _params(**{"pretrain.runtime.workers": 1, "pretrain.runtime.decode": decode}))
    aligned = work / "data/aligned/demo_webface"
    aligned.unlink()
    shutil.copytree(inputs / "data/aligned/demo_webface", aligned)
    table = pd.read_parquet(aligned / "alignment.parquet")
    row = table[table["status"] == "aligned"].iloc[0]
    shard = aligned / "shards" / f"shard-{int(row['shard']):05d}.tar"
    data = bytearray(shard.read_bytes())
    data[int(row["offset"]) : int(row["offset"]) + 64] = b"\0" * 64
    shard.write_bytes(bytes(data))
    res = _run(work, ok=False)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "do not decode as an image (corrupt shard?)" in lines[-1], lines[-3:]
    assert "Traceback" not in res.stderr and "DataLoader worker" not in res.stderr
    assert not (work / OUT).exists() and not (work / METRICS).exists()
    where = ("on cpu in the training process (pretrain.runtime.decode: device)" if decode == "device"
             else "in 1 loader worker processes (pretrain.runtime.decode: worker)")
    assert f"faces decoded {where}" in res.stderr
