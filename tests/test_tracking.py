"""MLflow tracking helper: one run per stage invocation, params + tags from the files read, FAILED on error, kill
switch."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from pipeline.config import StageParams, load_params
from stages.provenance import Input, content_hash
from stages.tracking import lock_hashes, stage_run
from tests.conftest import REPO, run_upstream, tiny_params


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
    raw = tmp_path / "data/raw/demo_oulu"
    (raw / "images/a").mkdir(parents=True)
    (raw / "images/a/1.png").write_bytes(b"one")
    (raw / "listing.tsv").write_bytes(b"two")
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
    # the hash of the files read, in DVC's directory format; not the (stale) value of dvc.lock
    one, two = hashlib.md5(b"one").hexdigest(), hashlib.md5(b"two").hexdigest()
    listing = f'[{{"md5": "{one}", "relpath": "images/a/1.png"}}, {{"md5": "{two}", "relpath": "listing.tsv"}}]'
    assert r.data.tags["input.data/raw/demo_oulu.md5"] == hashlib.md5(listing.encode()).hexdigest() + ".dir"
    assert r.data.tags["input.data/raw/demo_oulu.nfiles"] == "2"
    assert "provenance_seconds" in r.data.metrics
    assert r.data.metrics["images"] == 12
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == "dynamic-mtl-face"
    # MLflow's UI opens on the training runs, not on the GenAI overview
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch, mlflow_uri, capsys):
    """An error ends the run FAILED; SIGTERM (or Ctrl-C) KILLED, with one line and exit code 143. A SIGKILL leaves
    it RUNNING: the next stage start ends KILLED the RUNNING runs of dead processes of this host (tags ``host``,
    ``pid``), no other."""
    import os
    import signal
    import socket
    import sys
    import time

    import typer
    from mlflow.tracking import MlflowClient

    from stages.common import user_errors

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    sp = StageParams(load_params(REPO / "params.yaml"), ["demo"])
    with pytest.raises(RuntimeError), stage_run("download", sp, item="x") as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"

    ids, before = [], signal.getsignal(signal.SIGTERM)

    @user_errors
    def command() -> None:
        with stage_run("download", sp, item="x") as run:
            ids.append(run.run_id)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the signal's handler raises here

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 143
    assert capsys.readouterr().err.splitlines()[-1] == "error: terminated by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is there only while a command runs
    (killed,) = ids
    client = MlflowClient(mlflow_uri)
    r = client.get_run(killed)
    assert r.info.status == "KILLED"
    assert r.data.tags["host"] == socket.gethostname() and r.data.tags["pid"] == str(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    experiment = r.info.experiment_id
    left = {}
    for name, host, pid in [("dead", socket.gethostname(), child.pid), ("live", socket.gethostname(), os.getppid()),
                            ("elsewhere", "another-host", child.pid), ("untagged", None, None)]:
        tags = {"host": host, "pid": str(pid)} if host else {}
        left[name] = client.create_run(experiment, tags=tags, run_name=name).info.run_id
    with stage_run("download", sp, item="x"):
        pass
    status = {name: client.get_run(run_id).info.status for name, run_id in left.items()}
    assert status == {"dead": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}


def test_kill_switch_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DMTL_MLFLOW", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    sp = StageParams(load_params(REPO / "params.yaml"), ["demo"])
    with stage_run("download", sp) as run:
        assert not run.enabled
        run.log_metrics({"a": 1})
    assert not (tmp_path / "x.db").exists()


def test_lock_hashes_ignore_unrelated_outs(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  a:\n    cmd: x\n    outs:\n    - path: data/raw/other\n      md5: zzz.dir\n")
    assert lock_hashes(tmp_path, ["data/raw/demo_oulu"]) == {}
    assert lock_hashes(tmp_path / "missing", ["x"]) == {}


def test_dataset_inputs_and_a_missing_input(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    (tmp_path / "fold0.json").write_text("{}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    sp = StageParams(load_params(REPO / "params.yaml"), ["demo"])
    inputs = [Input("fold0.json", dataset="demo_oulu fold0", context="training"), Input("absent.parquet")]
    with stage_run("finetune", sp, inputs=inputs) as run:
        run_id = run.run_id
    r = MlflowClient(mlflow_uri).get_run(run_id)
    assert r.data.tags["input.absent.parquet.md5"] == "missing"
    (logged,) = r.inputs.dataset_inputs
    assert logged.dataset.name == "demo_oulu fold0"
    assert logged.dataset.digest == hashlib.md5(b"{}").hexdigest() == content_hash(tmp_path / "fold0.json")[0]
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"


def test_tags_follow_the_files_a_hand_run_stage_read_not_dvc_lock(tmp_path, monkeypatch, mlflow_uri):
    """The issue's case: an upstream output changes after DVC recorded it, then a stage runs by hand."""
    import os

    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from stages.app import app

    root = run_upstream(tmp_path, tiny_params(**{"folds.k": 3}), [("download", "demo_oulu"), ("manifest", "demo_oulu")])
    manifest = root / "data/manifests/demo_oulu.parquet"
    clean = content_hash(manifest)[0]
    (root / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  manifest@demo_oulu:\n    cmd: x\n    outs:\n"
                                   f"    - path: data/manifests/demo_oulu.parquet\n      md5: {clean}\n")
    image = next((root / "data/raw/demo_oulu/images").rglob("*.*"))
    image.write_bytes(b"not an image")  # one corrupt raw image: the manifest built now skips it
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    runner = CliRunner()
    for command in ("manifest", "folds"):
        res = runner.invoke(app, ["--params", "params.yaml", command, "demo_oulu"])
        assert res.exit_code == 0, res.output
    now = content_hash(manifest)[0]
    assert now != clean
    client = MlflowClient(mlflow_uri)
    runs = {r.data.tags["stage"]: r for r in client.search_runs(
        [client.get_experiment_by_name(os.environ.get("DMTL_EXPERIMENT", "dynamic-mtl-face")).experiment_id])}
    assert runs["folds"].data.tags["input.data/manifests/demo_oulu.parquet.md5"] == now
    assert runs["manifest"].data.tags["input.data/raw/demo_oulu.md5"] == content_hash(root / "data/raw/demo_oulu")[0]
    (dataset,) = runs["folds"].inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("demo_oulu", now)

