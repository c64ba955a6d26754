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

#: folds: the tiny demo has 3 subjects, so 3 folds of one test subject each (types 3/4 are skipped and counted)
E2E_PARAMS = {"folds.k": 3}


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
        if src.is_file() and not rel.startswith(("data/raw/", "data/manifests/", "data/aligned/", "data/folds/",
                                                           "data/work/", "metrics/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS))
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
    assert names == sorted(["download@demo_oulu", "download@demo_webface", "manifest@demo_oulu",
                            "manifest@demo_webface", "align@demo_oulu", "align@demo_webface", "folds@demo_oulu"])
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
    params = tiny_params(**E2E_PARAMS, **{"datasets.demo_oulu.options.keep_last": 2})
    write_params(dst / "params.yaml", params)
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"manifest@demo_oulu"}
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS))


def test_repro_writes_every_fold_and_pairs(repo_copy):
    dst, env, out = repo_copy
    assert "Running stage 'folds@demo_oulu'" in out
    assert out.index("Running stage 'manifest@demo_oulu'") < out.index("Running stage 'folds@demo_oulu'")
    folds = dst / "data/folds/demo_oulu"
    assert sorted(p.name for p in folds.iterdir()) == sorted(
        [f"fold{k}.json" for k in range(3)] + [f"fold{k}-pairs.parquet" for k in range(3)])
    for k in range(3):
        fold = json.loads((folds / f"fold{k}.json").read_text())
        assert fold["test_subjects"] == [f"P{k + 1:03d}"] and len(fold["train_subjects"]) == 2
    metrics = json.loads((dst / "metrics/folds/demo_oulu.json").read_text())
    assert metrics["pairs"] == 3 * 2 * 12 and metrics["subjects"] == 3  # types 1, 2: 6 references x 2 required
    assert metrics["pairs_skipped_by_reason"] == {f"type{t}:{e}": 18 for t in (3, 4) for e in ("Happiness", "Surprise")}


def test_folds_params_rerun_only_folds_and_run_is_not_a_param(repo_copy):
    dst, env, _ = repo_copy
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"folds.run": [0, 1]}))
    assert _run([sys.executable, "-m", "dvc", "status", "-q"], dst, env, check=False).returncode == 0
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"folds.seed": 1}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"folds@demo_oulu"}
    res = _run([sys.executable, "-m", "dvc", "repro"], dst, env)
    assert [line for line in res.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'folds@demo_oulu':"]
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS))
    _run([sys.executable, "-m", "dvc", "repro"], dst, env)  # back to the committed state (run-cache restore)


def test_repro_aligns_every_dataset_after_its_manifest(repo_copy):
    from pipeline.data.faces import FaceSource

    dst, env, out = repo_copy
    for name, n in (("demo_oulu", 3 * 6 * 4), ("demo_webface", 3 * 3)):
        assert out.index(f"Running stage 'manifest@{name}'") < out.index(f"Running stage 'align@{name}'")
        metrics = json.loads((dst / f"metrics/align/{name}.json").read_text())
        assert metrics["images"] == n and metrics["aligned_fraction"] >= 0.95
        faces = FaceSource(dst / f"data/aligned/{name}")
        assert len(faces) == metrics["aligned"] and faces.read(0).shape == (182, 182, 3)
    assert sorted(p.name for p in (dst / "data/work/align").iterdir()) == [  # work folders cleared
        "demo_oulu.last-run.json", "demo_webface.last-run.json"]
    assert "images_per_second" not in metrics  # timing lives in MLflow and the last-run file, not the DVC metric


def test_align_params_rerun_only_align_and_runtime_params_do_not(repo_copy):
    dst, env, _ = repo_copy
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"align.batch_size": 7, "align.workers": 0}))
    assert _run([sys.executable, "-m", "dvc", "status", "-q"], dst, env, check=False).returncode == 0
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"align.quality": 90}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"align@demo_oulu", "align@demo_webface"}
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS))
