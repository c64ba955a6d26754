"""MLflow tracking helper: one run per stage invocation, params + tags, FAILED on error, kill switch."""

from __future__ import annotations

import subprocess

import pytest

from pipeline.config import StageParams, load_params
from stages.tracking import input_hashes, stage_run
from tests.conftest import REPO


def _git_repo(path):
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                    "--allow-empty", "-m", "init"], check=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_run_logs_params_and_tags(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    sha = _git_repo(tmp_path)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  download@demo_oulu:\n    cmd: x\n    outs:\n    - path: data/raw/demo_oulu\n"
        "      hash: md5\n      md5: abc123.dir\n      nfiles: 7\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "manifest@demo_oulu")
    sp = StageParams(load_params(REPO / "params.yaml"), ["datasets.demo_oulu", "manifest"])
    with stage_run("manifest", sp, item="demo_oulu", inputs=["data/raw/demo_oulu"]) as run:
        run.log_metrics({"images": 12})
        run_id = run.run_id
    client = MlflowClient(mlflow_uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "manifest@demo_oulu"
    assert r.data.params["datasets.demo_oulu.source.n_subjects"] == "40"
    assert r.data.params["manifest.check"] == "decode"
    assert r.data.tags["git.commit"] == sha
    assert r.data.tags["git.dirty"] == "false"  # untracked files (dvc.lock here) do not make the tree dirty
    assert r.data.tags["stage"] == "manifest"
    assert r.data.tags["dvc.stage"] == "manifest@demo_oulu"
    assert r.data.tags["dvc.input.data/raw/demo_oulu.md5"] == "abc123.dir"
    assert r.data.metrics["images"] == 12
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == "dynamic-mtl-face"
    # MLflow's UI opens on the training runs, not on the GenAI overview
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    sp = StageParams(load_params(REPO / "params.yaml"), ["demo"])
    with pytest.raises(RuntimeError), stage_run("download", sp, item="x") as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"


def test_kill_switch_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DMTL_MLFLOW", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    sp = StageParams(load_params(REPO / "params.yaml"), ["demo"])
    with stage_run("download", sp) as run:
        assert not run.enabled
        run.log_metrics({"a": 1})
    assert not (tmp_path / "x.db").exists()


def test_input_hashes_ignore_unrelated_outs(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  a:\n    cmd: x\n    outs:\n    - path: data/raw/other\n      md5: zzz.dir\n")
    assert input_hashes(tmp_path, ["data/raw/demo_oulu"]) == {}
    assert input_hashes(tmp_path / "missing", ["x"]) == {}
