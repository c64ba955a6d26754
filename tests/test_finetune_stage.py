"""The finetune stage (`python -m stages finetune`) on the tiny demo: outputs, MLflow, resume after SIGKILL, bad inputs.

The inputs (manifest, aligned faces, folds) are produced once per module by the real upstream commands on the tiny
demo (3 subjects, 3 folds), so the test needs no pre-built data/ folder. Stage runs are subprocesses, as under DVC.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.evaluation.verification import evaluate_distances
from pipeline.models.checkpoint import load_model
from stages.app import app
from tests.conftest import (
    REPO,
    run_upstream,
    sigkill_stage_when,
    stage_env,
    still_alive,
    tiny_params,
    write_params,
)

runner = CliRunner()
EPOCHS, EPOCH_SIZE, BATCH = 3, 2, 4
TASKS = ["identity", "expression"]
OULU_SIX = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
OUT = Path("data/finetune/demo_oulu/fold0-dynamic")
METRICS = Path("metrics/finetune/demo_oulu/fold0-dynamic.json")

#: the tiny demo (3 subjects → folds.k 3) with a finetune small enough for a 2-core CPU
STAGE_PARAMS = {
    "folds.k": 3, "folds.run": [0], "align.workers": 0, "align.batch_size": 8,
    "finetune.runtime.device": "cpu", "finetune.runtime.threads": 1, "finetune.runtime.eval_batch_size": 32,
    "finetune.common.network.input_size": 80, "finetune.common.batch_size": BATCH,
    "finetune.common.epoch_size": EPOCH_SIZE,
    "finetune.common.epochs": EPOCHS, "finetune.run_methods": ["dynamic", "static"], "finetune.common.init": "random",
}


def _params(**overrides) -> dict:
    return tiny_params(**{**STAGE_PARAMS, **overrides})


LR = _params()["finetune"]["common"]["schedule"]["lr"]
LR_WEIGHTS = _params()["finetune"]["methods"]["dynamic"]["lr_weights"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with the tiny demo generated, its manifest, aligned faces and folds (shared, read-only)."""
    steps = [(c, "demo_oulu") for c in ("download", "manifest", "align", "folds")]
    return run_upstream(tmp_path_factory.mktemp("finetune-inputs"), _params(), steps)


def _workdir(path: Path, inputs: Path, params: dict, *, folds: list[int] | None = None) -> Path:
    """A stage folder: the shared inputs linked in, its own params.yaml. ``folds``: copy only these fold files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "data/manifests").mkdir(parents=True)
    (path / "data/aligned").mkdir(parents=True)
    (path / "data/manifests/demo_oulu.parquet").symlink_to(inputs / "data/manifests/demo_oulu.parquet")
    (path / "data/aligned/demo_oulu").symlink_to(inputs / "data/aligned/demo_oulu")
    (path / "data/protocols").symlink_to(REPO / "data/protocols")
    if folds is None:
        (path / "data/folds").mkdir(parents=True)
        (path / "data/folds/demo_oulu").symlink_to(inputs / "data/folds/demo_oulu")
    else:
        (path / "data/folds/demo_oulu").mkdir(parents=True)
        for k in folds:
            for name in (f"fold{k}.json", f"fold{k}-pairs.parquet"):
                (path / "data/folds/demo_oulu" / name).symlink_to(inputs / "data/folds/demo_oulu" / name)
    # The stage hashes its training code by repo-relative path (the resume key), so it must run where pipeline/ is
    # (the repo root, as under DVC). See test_resume_key_does_not_depend_on_the_working_directory.
    (path / "pipeline").symlink_to(REPO / "pipeline")
    write_params(path / "params.yaml", params)
    return path


def _env(workdir: Path, mlflow_db: Path | None) -> dict[str, str]:
    return stage_env(workdir, mlflow_db)


def _cmd(method: str = "dynamic", fold: int = 0) -> list[str]:
    return [sys.executable, "-m", "stages", "--params", "params.yaml", "finetune", "--fold", str(fold),
            "--method", method]


def _run_stage(workdir: Path, mlflow_db: Path | None, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(**kw), cwd=workdir, env=_env(workdir, mlflow_db), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"stage failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict:
    """One uninterrupted run of finetune@0-dynamic, tracked in its own MLflow store."""
    base = tmp_path_factory.mktemp("finetune-ref")
    work = _workdir(base / "repo", inputs, _params())
    db = base / "mlflow.db"
    res = _run_stage(work, db)
    return {"dir": work, "db": db, "stdout": res.stdout, "stderr": res.stderr}


def _steps(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path)
    return model.state_dict()


# --- outputs --------------------------------------------------------------------------------------------------------


def test_stage_writes_model_steps_scores_and_history(reference):
    work = reference["dir"]
    out = work / OUT
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "history.json", "model.pt", "scores.npz",
                                                     "steps.csv"]
    model, meta = load_model(out / "model.pt")  # no params.yaml needed
    cfg = model.config
    assert [(h.name, h.n_classes) for h in cfg.heads] == [("identity", 3), ("expression", 6)]
    assert cfg.network.input_size == 80 and cfg.network.depth == "reduced" and cfg.align_convention == "paper_182_44"
    assert cfg.class_names == {"expression": OULU_SIX}
    params = _params()
    expression_head = params["task_sets"]["fr_fer"]["tasks"]["expression"]["head"]
    assert cfg.heads[1].head.hidden == expression_head["hidden"]
    assert cfg.heads[1].head.relu_logits == expression_head["relu_logits"]
    assert cfg.network.keep_prob == params["finetune"]["common"]["network"]["keep_prob"]
    assert meta["fold"] == 0 and meta["method"] == "dynamic" and meta["epoch"] == EPOCHS
    assert meta["test_subjects"] == ["P001"]  # fold 0 of the 3-subject demo

    rows = _steps(out / "steps.csv")
    assert len(rows) == EPOCHS * EPOCH_SIZE
    assert [int(r["step"]) for r in rows] == list(range(1, EPOCHS * EPOCH_SIZE + 1))
    assert [int(r["epoch"]) for r in rows] == [e for e in range(1, EPOCHS + 1) for _ in range(EPOCH_SIZE)]
    assert list(rows[0])[-len(TASKS):] == [f"present_{t}" for t in TASKS]
    for r in rows:
        weights = [float(r[f"weight_{t}"]) for t in TASKS]
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)  # the dynamic unit's softmax
        assert all(r[f"present_{t}"] == "1" for t in TASKS)  # every training image labels both tasks
        assert all(float(r[f"loss_{t}"]) > 0 for t in TASKS)
        assert float(r["lr"]) == LR and float(r["lr_weights"]) == LR_WEIGHTS  # constant rates from params.yaml

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    scores = np.load(out / "scores.npz")
    keys = set(scores.files)
    for prefix in ["last"] + [f"best_{c}" for c in ("verification", "expression", "authentication")]:
        assert {f"{prefix}_distances", f"{prefix}_same", f"{prefix}_expression_logits",
                f"{prefix}_expression_labels"} <= keys, prefix
    n_test = len(scores["test_image_ids"])
    assert scores["last_expression_logits"].shape == (n_test, 6)
    assert all(i.startswith("demo_oulu/P001/") for i in scores["test_image_ids"])
    assert scores["last_distances"].shape == scores["last_same"].shape and scores["last_same"].dtype == bool
    assert not (work / "data/work/finetune").exists() or not any((work / "data/work/finetune").iterdir())
    assert f"-> {OUT}, {METRICS}" in reference["stdout"]


def test_metrics_json_is_consistent_with_history_and_scores(reference):
    work = reference["dir"]
    metrics = json.loads((work / METRICS).read_text())
    history = json.loads((work / OUT / "history.json").read_text())
    scores = np.load(work / OUT / "scores.npz")
    assert (metrics["fold"], metrics["method"], metrics["weighting"], metrics["dataset"]) == (0, "dynamic", "dynamic",
                                                                                            "demo_oulu")
    assert metrics["epochs"] == EPOCHS
    assert metrics["data"]["train_images"] == 2 * 6 * 3  # 2 training subjects × 6 sequences × 3 peak frames
    assert set(metrics["best"]) == {"selected_on", "verification", "expression", "authentication"}
    assert metrics["best"]["selected_on"] == "test_fold"
    last = metrics["last"]
    assert last == {"epoch": EPOCHS, **history[-1]["test"]}
    for key in ("verification", "verification_accuracy", "expression", "expression_accuracy", "authentication"):
        assert key in last, key
    assert last["authentication"] == pytest.approx(last["verification_accuracy"] * last["expression_accuracy"])
    for crit, key in (("verification", "verification_accuracy"), ("expression", "expression_accuracy"),
                      ("authentication", "authentication")):
        values = [h["test"][key] for h in history]
        epoch = int(np.argmax(values)) + 1
        assert metrics["best"][crit] == {"epoch": epoch, **history[epoch - 1]["test"]}, crit
    # the saved scores reproduce the last epoch's numbers
    labels = scores["last_expression_labels"]
    labelled = labels >= 0
    predicted = scores["last_expression_logits"][labelled].argmax(1)
    assert last["expression_accuracy"] == pytest.approx(float(np.mean(predicted == labels[labelled])))
    assert last["expression"]["n_images"] == int(labelled.sum())
    common = _params()["finetune"]["common"]
    protocol = common["protocol"]
    ver = evaluate_distances(scores["last_distances"], scores["last_same"], n_folds=protocol["n_folds"],
                             far_targets=tuple(protocol["far_targets"]), mode=protocol["mode"], seed=common["seed"])
    assert last["verification_accuracy"] == pytest.approx(ver.accuracy)
    assert last["verification"]["n_pairs"] == len(scores["last_distances"]) == metrics["data"]["test_pairs"]
    assert last["verification"]["accuracy"] == last["verification_accuracy"]


def test_mlflow_run_has_per_step_weights_params_and_artifacts(reference):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{reference['db']}")
    exp = client.get_experiment_by_name("dynamic-mtl-face")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "finetune@demo_oulu/fold0/dynamic"
    tags = run.data.tags
    assert (tags["fold"], tags["method"], tags["stage"], tags["weighting"]) == ("0", "dynamic", "finetune", "dynamic")
    assert "resumed" not in tags
    assert run.data.params["finetune.common.epochs"] == str(EPOCHS)
    assert float(run.data.params["finetune.methods.dynamic.lr_weights"]) == LR_WEIGHTS
    rows = _steps(reference["dir"] / OUT / "steps.csv")
    for name in ("weight_identity", "weight_expression", "loss_identity", "lr"):
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, EPOCHS * EPOCH_SIZE + 1)), name
        assert [m.value for m in history] == pytest.approx([float(r[name]) for r in rows], rel=1e-9), name
    per_epoch = client.get_metric_history(run.info.run_id, "test_verification_accuracy")
    assert sorted(m.step for m in per_epoch) == list(range(1, EPOCHS + 1))
    metrics = json.loads((reference["dir"] / METRICS).read_text())
    assert run.data.metrics["last_expression_accuracy"] == pytest.approx(metrics["last"]["expression_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"steps.csv", "history.json", "metrics.json"} <= artifacts


# --- resume ---------------------------------------------------------------------------------------------------------


def test_sigkill_then_rerun_ends_like_an_uninterrupted_run_in_the_same_mlflow_run(reference, inputs, tmp_path):
    """SIGKILL of the stage process alone (no cleanup code runs) after its first checkpoint: no child process
    outlives it, its MLflow run is left RUNNING; the rerun resumes the same run (KILLED by the start, then RUNNING
    again, then FINISHED) and ends bit-identical to the uninterrupted run, its resume state deleted."""
    from mlflow.tracking import MlflowClient

    work = _workdir(tmp_path / "repo", inputs, _params())
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen(_cmd(), cwd=work, env=_env(work, db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    children = sigkill_stage_when(proc, lambda: any((work / "data/work/finetune").glob("*/state.pt")),
                                  "its first checkpoint")
    assert proc.returncode == -signal.SIGKILL
    assert still_alive(children) == []
    assert not (work / METRICS).exists() and not (work / OUT).exists()
    client = MlflowClient(f"sqlite:///{db}")
    (killed,) = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    assert killed.info.status == "RUNNING" and killed.data.tags["pid"] == str(proc.pid)
    state = torch.load(next((work / "data/work/finetune").glob("*/state.pt")), weights_only=False)
    assert 1 <= state["epoch"] <= EPOCHS  # usually 1; a starved poller may see a later checkpoint first

    res = _run_stage(work, db)
    assert f"resumed after epoch {state['epoch']}" in res.stderr
    assert json.loads((work / METRICS).read_text()) == json.loads((reference["dir"] / METRICS).read_text())
    assert (work / OUT / "steps.csv").read_text() == (reference["dir"] / OUT / "steps.csv").read_text()
    assert (work / OUT / "history.json").read_text() == (reference["dir"] / OUT / "history.json").read_text()
    a, b = _state(work / OUT / "model.pt"), _state(reference["dir"] / OUT / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = np.load(work / OUT / "scores.npz"), np.load(reference["dir"] / OUT / "scores.npz")
    assert sorted(sa.files) == sorted(sb.files) and all(np.array_equal(sa[k], sb[k]) for k in sa.files)
    assert not any((work / "data/work/finetune").iterdir())  # the checkpoint folder is cleared after success
    assert not list((work / OUT.parent).glob(".*"))  # no temporary left

    runs = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # reopened, not a duplicate
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("resumed") == "true"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "weight_identity"))
    assert steps == list(range(1, EPOCHS * EPOCH_SIZE + 1))  # every step once: none lost, none logged twice


@pytest.mark.parametrize(("at", "logged"), [(2, 0), (2, 1), (2, EPOCH_SIZE), (EPOCHS, EPOCH_SIZE)],
                         ids=["before-rows", "mid-rows", "after-rows", "last-epoch"])
def test_an_interruption_while_logging_an_epoch_leaves_every_step_logged_once(inputs, tmp_path, monkeypatch,
                                                                            mlflow_uri, at, logged):
    """Interrupted after epoch ``at``'s checkpoint, with ``logged`` of its rows in MLflow (none, a part, all but the
    epoch scalars): the resumed run (which trains the remaining epochs, possibly none) must log exactly what is
    missing, so the run's curves have every step once. This is the window the SIGKILL test can only hit by chance."""
    from mlflow.tracking import MlflowClient

    from stages.tracking import RunLogger

    work = _workdir(tmp_path / "repo", inputs, _params())
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    original = RunLogger.log_rows
    calls = []

    def interrupted(self, rows, *a, **kw):
        calls.append(rows[0]["epoch"])
        if len(calls) == at:
            original(self, rows[:logged], *a, **kw)
            raise KeyboardInterrupt  # as a kill in that window would
        return original(self, rows, *a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(RunLogger, "log_rows", interrupted)
        res = runner.invoke(app, ["--params", "params.yaml", "finetune", "--fold", "0", "--method", "dynamic"])
    assert res.exit_code == 130 and calls == list(range(1, at + 1))
    res = runner.invoke(app, ["--params", "params.yaml", "finetune", "--fold", "0", "--method", "dynamic"])
    assert res.exit_code == 0, res.output
    assert f"resumed after epoch {at}" in res.stderr
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    for name in ("weight_identity", "loss_expression", "lr"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
        assert steps == list(range(1, EPOCHS * EPOCH_SIZE + 1)), name
    epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_verification_accuracy"))
    assert epochs == list(range(1, EPOCHS + 1))


def test_resume_key_does_not_depend_on_the_working_directory(inputs, tmp_path, monkeypatch):
    """The checkpoint key hashes the training code; it must find that code wherever the stage is started from."""
    from stages.training_runs import work_key

    files = [inputs / "data/folds/demo_oulu/fold0.json", inputs / "data/aligned/demo_oulu/alignment.parquet"]
    monkeypatch.chdir(REPO)
    at_root = work_key({"a": 1}, files)
    monkeypatch.chdir(tmp_path)
    assert work_key({"a": 1}, files) == at_root
    assert work_key({"a": 2}, files) != at_root


# --- bad inputs -----------------------------------------------------------------------------------------------------


@pytest.fixture
def errdir(inputs, tmp_path, monkeypatch, no_mlflow) -> Path:
    work = _workdir(tmp_path / "repo", inputs, _params(), folds=[0])
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    return work


def _error(work: Path, *args: str, params: dict | None = None) -> str:
    if params is not None:
        write_params(work / "params.yaml", params)
    res = runner.invoke(app, ["--params", "params.yaml", "finetune", *args])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not (work / "metrics").exists() and not (work / "data/finetune").exists()
    return lines[0]


def test_unknown_method_is_one_line(errdir):
    line = _error(errdir, "--fold", "0", "--method", "bogus")
    assert "unknown method 'bogus'" in line and "dynamic" in line


@pytest.mark.parametrize(("option", "value", "words"), [
    ("variant", "bogus", ["variant", "bogus"]),
    ("sigma", -1.0, ["sigma"]),
    ("typo_option", 1, ["typo_option"]),
])
def test_bad_weighting_option_names_the_method_block(errdir, option, value, words):
    line = _error(errdir, "--fold", "0", "--method", "dynamic",
                  params=_params(**{f"finetune.methods.dynamic.{option}": value}))
    assert "finetune.methods.dynamic" in line
    assert all(w in line for w in words), line


def test_a_method_outside_run_methods_is_checked_when_it_is_run(errdir):
    """Params validation checks the methods of run_methods; any other method of finetune.methods can still be run by
    hand, and a bad block is then the same one-line error."""
    params = _params(**{"finetune.methods.naive_dynamic.base": [0.0]})
    assert "naive_dynamic" not in params["finetune"]["run_methods"]
    line = _error(errdir, "--fold", "0", "--method", "naive_dynamic", params=params)
    assert "finetune.methods.naive_dynamic: weighting 'naive_dynamic': option 'base'" in line, line


def test_a_non_finite_stop_names_the_state_file_it_keeps(errdir, monkeypatch):
    """Epoch 2's evaluation diverges: the one-line error names epoch 1's state file, which exists."""
    import re

    import pipeline.training.finetune as loop
    from pipeline.training.step import NonFiniteError

    finite = loop._finite

    def diverges(pred, epoch):
        if epoch == 2:
            raise NonFiniteError(f"non-finite model outputs when evaluating epoch {epoch}: its last steps diverged")
        return finite(pred, epoch)

    monkeypatch.setattr(loop, "_finite", diverges)
    res = runner.invoke(app, ["--params", "params.yaml", "finetune", "--fold", "0", "--method", "dynamic"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("error: non-finite model outputs when evaluating epoch 2"), line
    named = Path(re.search(r"checkpointed in (\S+state\.pt)", line).group(1))
    assert (errdir / named).is_file() and torch.load(errdir / named, weights_only=False)["epoch"] == 1


def test_missing_fold_file_and_fold_out_of_range(errdir):
    line = _error(errdir, "--fold", "1", "--method", "dynamic")
    assert "fold1.json" in line and "not found" in line
    line = _error(errdir, "--fold", "3", "--method", "dynamic")
    assert "--fold 3" in line and "folds.k" in line


def test_init_that_is_no_checkpoint_or_does_not_fit_is_one_line(errdir):
    (errdir / "junk.pt").write_bytes(b"not a checkpoint")
    line = _error(errdir, "--fold", "0", "--method", "dynamic",
                  params=_params(**{"finetune.common.init": "junk.pt"}))
    assert line.startswith("error: finetune.common.init: junk.pt is not a model checkpoint"), line
    # a facenet-pytorch state dict is accepted only by a full-depth model (the demo's is reduced)
    from facenet_pytorch import InceptionResnetV1

    torch.save(InceptionResnetV1(pretrained=None).state_dict(), errdir / "vggface2.pt")
    line = _error(errdir, "--fold", "0", "--method", "dynamic",
                  params=_params(**{"finetune.common.init": "vggface2.pt", "finetune.common.network.depth": "reduced"}))
    assert "finetune.common.init" in line and "depth 'full'" in line, line


def test_lr_schedule_must_lie_under_data_protocols(errdir, tmp_path):
    outside = tmp_path / "schedule.txt"
    outside.write_text("0: 0.1\n")
    for path in (str(outside), "data/../schedule.txt", "schedules/lr.txt"):
        line = _error(errdir, "--fold", "0", "--method", "dynamic",
                      params=_params(**{"finetune.common.schedule.file": path}))
        assert "finetune.common.schedule" in line and "data/protocols" in line, line


def test_bad_schedule_file_and_missing_init_checkpoint(errdir):
    (errdir / "data/protocols").unlink()
    (errdir / "data/protocols").mkdir()
    (errdir / "data/protocols/bad.txt").write_text("0: 0.1\nten: 0.01\n")
    line = _error(errdir, "--fold", "0", "--method", "dynamic",
                  params=_params(**{"finetune.common.schedule.file": "data/protocols/bad.txt"}))
    assert "finetune.common.schedule" in line and "bad.txt:2" in line
    line = _error(errdir, "--fold", "0", "--method", "dynamic",
                  params=_params(**{"finetune.common.init": "models/missing.pt"}))
    assert "finetune.common.init" in line and "models/missing.pt" in line


# --- any task set, from params alone ---------------------------------------------------------------------------------

#: a third task on the tiny demo, labelled only on the peak frames of the happy and surprised sequences (2 of 6
#: sequences, and on none of the neutral first frames that identity labels): many batches have no sample of it
PAIR = {"classes": ["Happiness", "Surprise"], "neutral": None, "peak_frames": 3, "neutral_frames": 0}
THREE_TASKS = {
    "title": "Identity, expression and happy-or-surprised",
    "tasks": {
        "identity": {"label": "identity", "head": {"hidden": 0, "relu_logits": False}, "loss": "softmax",
                     "center": {"factor": 0.1, "alpha": 0.5, "embedding": "own", "matrix": "own", "updates": True},
                     "evaluation": ["verification", "identification"]},
        "expression": {"label": "expression", "head": {"hidden": 16, "relu_logits": False}, "loss": "softmax",
                       "center": None, "evaluation": ["classification"]},
        "pair": {"label": "pair", "head": {"hidden": 0, "relu_logits": False}, "loss": "softmax", "center": None,
                 "evaluation": ["classification"]},
    },
    "copy_branches": [["identity", "expression"], ["identity", "pair"]],
    "train_images": "any",
}


def _three_task_params() -> dict:
    params = _params(**{"finetune.common.task_set": "three", "datasets.demo_oulu.label_sets.pair": PAIR,
                        "finetune.run_methods": ["dynamic", "naive_dynamic", "gradnorm"],
                        "finetune.methods.dynamic.base": [0.0] * 3, "finetune.methods.naive_dynamic.base": [0.0] * 3})
    params["task_sets"]["three"] = THREE_TASKS
    return params


@pytest.mark.parametrize("method", ["dynamic", "naive_dynamic", "gradnorm"])
def test_a_three_task_set_with_a_sparsely_labelled_task_trains_from_params_alone(inputs, tmp_path, monkeypatch,
                                                                               no_mlflow, method):
    """The task-set issue's generality check: three tasks, one labelled on a fraction of the images, trained by the
    stage from params alone; batches without that task's label drop it (``present_pair`` 0) and the logged totals
    follow the masked formulas."""
    work = _workdir(tmp_path / "repo", inputs, _three_task_params())
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    res = runner.invoke(app, ["--params", "params.yaml", "finetune", "--fold", "0", "--method", method])
    assert res.exit_code == 0, res.output
    out = Path(f"data/finetune/demo_oulu/fold0-{method}")
    model, _ = load_model(out / "model.pt")
    assert [(h.name, h.n_classes) for h in model.config.heads] == [("identity", 3), ("expression", 6), ("pair", 2)]
    assert model.config.class_names == {"expression": OULU_SIX, "pair": ["Happiness", "Surprise"]}
    names = ["identity", "expression", "pair"]
    rows = _steps(out / "steps.csv")
    assert {r["present_identity"] for r in rows} == {"1"}  # identity labels every training image
    assert {r["present_pair"] for r in rows} == {"0", "1"}  # some batches have a pair label, some have none
    for r in rows:
        present = [r[f"present_{t}"] == "1" for t in names]
        losses = [float(r[f"loss_{t}"]) for t in names]
        weights = [float(r[f"weight_{t}"]) for t in names]
        assert all(math.isfinite(v) for v in [*losses, *weights, float(r["total_loss"])])
        assert all(loss == 0.0 for loss, p in zip(losses, present, strict=True) if not p)
        used = [(w, loss) for w, loss, p in zip(weights, losses, present, strict=True) if p]
        if method == "gradnorm":  # constants to the network: Σ over the present tasks
            assert sum(weights) == pytest.approx(3.0, rel=1e-5)  # renormalised to Σ w = T
        else:
            assert sum(weights) == pytest.approx(1.0, rel=1e-5)  # the unit's softmax, over all three tasks
        assert float(r["total_loss"]) == pytest.approx(sum(w * v for w, v in used), rel=1e-5)
        if method == "dynamic":
            assert float(r["weight_loss"]) == pytest.approx(sum(w / (v + 0.01) for w, v in used), rel=1e-5)
    metrics = json.loads(Path(f"metrics/finetune/demo_oulu/fold0-{method}.json").read_text())
    last = metrics["last"]
    assert set(metrics["best"]) == {"selected_on", "verification", "expression", "pair", "identification",
                                    "authentication"}
    assert last["authentication"] == pytest.approx(last["verification_accuracy"] * last["expression_accuracy"]
                                                   * last["pair_accuracy"])
    assert last["pair"]["class_names"] == ["Happiness", "Surprise"]
    assert 0.0 <= last["identification_rank1"] <= 1.0 and last["identification"]["task"] == "identity"
    # the train images are those labelled for any task: identity's, neutral first frames included
    assert metrics["data"]["train_images"] > 2 * 6 * 3


def test_a_dataset_that_lacks_a_task_label_or_is_not_listed_is_one_line(errdir):
    params = _three_task_params()
    del params["datasets"]["demo_oulu"]["label_sets"]["pair"]
    line = _error(errdir, "--fold", "0", "--method", "dynamic", params=params)
    assert "task_sets.three.tasks.pair.label: 'pair' is neither a manifest label column" in line, line
    line = _error(errdir, "--fold", "0", "--method", "dynamic", "--dataset", "demo_webface", params=_params())
    assert "--dataset demo_webface: not in finetune.datasets (demo_oulu)" in line, line
