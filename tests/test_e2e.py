"""End to end: copy the repo into a temp git repo, `dvc repro` the tiny demo, check outputs, MLflow and idempotency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.manifest import read_manifest
from tests.conftest import REPO, tiny_params, write_params

pytestmark = pytest.mark.e2e


def _run(args, cwd, env, check=True):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        cmd = " ".join(map(str, args))
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/raw/", "data/manifests/", "metrics/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    write_params(dst / "params.yaml", tiny_params())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "DVC_", "DMTL_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(dst))
    _run(["git", "init", "-q"], dst, env)
    _run(["git", "add", "-A"], dst, env)
    _run(["git", "commit", "-q", "-m", "copy"], dst, env)
    res = _run([sys.executable, "-m", "dvc", "repro"], dst, env)
    return dst, env, res.stdout


def test_repro_writes_manifests_and_metrics(repo_copy):
    dst, env, out = repo_copy
    for name, n in (("demo_oulu", 3 * 6 * 4), ("demo_webface", 3 * 3)):
        df = read_manifest(dst / f"data/manifests/{name}.parquet")
        assert len(df) == n
        metrics = json.loads((dst / f"metrics/manifest/{name}.json").read_text())
        assert metrics["images"] == n and metrics["skipped"] == 0
    show = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], dst, env).stdout
    assert "metrics/manifest/demo_oulu.json" in show
    stages = _run([sys.executable, "-m", "dvc", "stage", "list"], dst, env).stdout
    assert "download@demo_oulu" in stages and "manifest@demo_webface" in stages


def test_repro_logged_one_mlflow_run_per_stage(repo_copy):
    from mlflow.tracking import MlflowClient

    dst, env, _ = repo_copy
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dynamic-mtl-face")
    assert exp is not None and exp.artifact_location == (dst / "mlruns").as_uri()
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["download@demo_oulu", "download@demo_webface", "manifest@demo_oulu", "manifest@demo_webface"]
    sha = _run(["git", "rev-parse", "HEAD"], dst, env).stdout.strip()
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git.commit"] == sha
        assert r.data.tags["dvc.stage"] == r.info.run_name
    manifest_run = next(r for r in runs if r.info.run_name == "manifest@demo_oulu")
    lock = yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    (raw_out,) = lock["download@demo_oulu"]["outs"]
    assert manifest_run.data.tags["dvc.input.data/raw/demo_oulu.md5"] == raw_out["md5"]


def test_second_repro_runs_nothing_and_params_hit_only_their_stage(repo_copy):
    dst, env, _ = repo_copy
    res = _run([sys.executable, "-m", "dvc", "repro"], dst, env)
    assert "Data and pipelines are up to date." in res.stdout
    assert _run([sys.executable, "-m", "dvc", "status", "-q"], dst, env, check=False).returncode == 0
    params = tiny_params(**{"datasets.demo_oulu.options.keep_last": 2})
    write_params(dst / "params.yaml", params)
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"manifest@demo_oulu"}
    write_params(dst / "params.yaml", tiny_params())
