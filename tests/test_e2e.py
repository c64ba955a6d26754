"""End to end: copy the repo into a temp git repo, `dvc repro` the tiny demo, check outputs, MLflow and idempotency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.data.manifest import read_manifest
from tests.conftest import TINY_FINETUNE, copy_repo, run_checked, tiny_params, write_params

pytestmark = pytest.mark.e2e

#: folds: the tiny demo has 3 subjects, so 3 folds of one test subject each (types 3/4 are skipped and counted);
#: finetune: one fold, two methods, one short epoch of a small input on one thread
E2E_PARAMS = {"folds.k": 3, "folds.run": [0], "finetune.run_methods": ["pretrained", "dynamic", "static"],
              **TINY_FINETUNE}
FINETUNE = ["finetune@0-pretrained", "finetune@0-dynamic", "finetune@0-static"]
#: stages that fine-tune (the pretrained method evaluates only)
TRAINED = ["finetune@0-dynamic", "finetune@0-static"]
#: per-fold stages of folds.run = [0] besides finetune
PER_FOLD = ["pixel_baseline@0"]


def _run(args, cwd, env, check=True):
    return run_checked(args, cwd, env, check)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    env = copy_repo(dst, tiny_params(**E2E_PARAMS))
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
                            "manifest@demo_webface", "align@demo_oulu", "align@demo_webface", "folds@demo_oulu",
                            "pretrain", *FINETUNE, *PER_FOLD, "report"])
    sha = _run(["git", "rev-parse", "HEAD"], dst, env).stdout.strip()
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git.commit"] == sha
        assert r.data.tags["dvc.stage"] == r.info.run_name
    manifest_run = next(r for r in runs if r.info.run_name == "manifest@demo_oulu")
    lock = yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    (raw_out,) = lock["download@demo_oulu"]["outs"]
    assert manifest_run.data.tags["dvc.input.data/raw/demo_oulu.md5"] == raw_out["md5"]
    (aligned_out,) = [o for o in lock["align@demo_oulu"]["outs"] if o["path"] == "data/aligned/demo_oulu"]
    for r in runs:
        if r.info.run_name in TRAINED:
            assert r.data.tags["dvc.input.data/aligned/demo_oulu.md5"] == aligned_out["md5"]
            steps = client.get_metric_history(r.info.run_id, "weight_identity")
            assert sorted(m.step for m in steps) == [1, 2]  # one epoch of 2 steps


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
    write_params(dst / "params.yaml", tiny_params(**{**E2E_PARAMS, "folds.run": [0, 1]}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    # only the new fold's stages (never run) and the report that lists the folds; folds itself is not stale
    assert {"finetune@1-dynamic", "finetune@1-static", "report"} <= set(status)
    assert all(name.endswith("@1") or "@1-" in name for name in set(status) - {"report"}), status
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"folds.seed": 1}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"folds@demo_oulu"}
    res = _run([sys.executable, "-m", "dvc", "repro", "folds@demo_oulu"], dst, env)  # not the finetune stages after it
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


def test_repro_finetunes_every_fold_and_method_after_folds(repo_copy):
    from pipeline.models.checkpoint import load_model

    dst, env, out = repo_copy
    for stage in FINETUNE:
        assert out.index("Running stage 'folds@demo_oulu'") < out.index(f"Running stage '{stage}'")
        assert out.index("Running stage 'pretrain'") < out.index(f"Running stage '{stage}'")
    pretrained, _ = load_model(dst / "data/pretrain/demo_webface/model.pt")
    for method in ("dynamic", "static"):
        model, meta = load_model(dst / f"data/finetune/demo_oulu/fold0-{method}/model.pt")
        assert meta["method"] == method and model.config.input_size == 80
        steps = (dst / f"data/finetune/demo_oulu/fold0-{method}/steps.csv").read_text().splitlines()
        assert len(steps) == 1 + 2  # header + epochs × epoch_size
        metrics = json.loads((dst / f"metrics/finetune/demo_oulu/fold0-{method}.json").read_text())
        assert metrics["last"]["epoch"] == 1 and set(metrics["best"]) == {"selected_on", "verification",
                                                                          "expression", "authentication"}
        fine = load_model(dst / f"data/finetune/demo_oulu/fold0-{method}/model.pt")[0].state_dict()
        # init: pretrain — the expression branch's blocks start as copies of the pretrained identity branch's, and
        # with the trunk's BN frozen its moving statistics are the pretrained ones
        pre = pretrained.state_dict()
        key = "trunk.conv2d_1a.1.running_mean"
        assert torch.equal(fine[key], pre[key]), key
    metrics = json.loads((dst / "metrics/finetune/demo_oulu/fold0-pretrained.json").read_text())
    assert metrics["epochs"] == 0 and metrics["last"]["epoch"] == 0
    assert "verification_accuracy" in metrics["last"] and "expression_accuracy" not in metrics["last"]
    pm = json.loads((dst / "metrics/pretrain/demo_webface.json").read_text())
    assert pm["steps"] == 4 and pm["verification"]["last"]["step"] == 4
    show = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], dst, env).stdout)
    assert "metrics/finetune/demo_oulu/fold0-static.json" in json.dumps(show)
    assert not any((dst / "data/work/finetune").iterdir())  # checkpoints cleared after each finished stage


def test_repro_ends_with_the_report_and_nests_the_fold_runs_under_it(repo_copy):
    from mlflow.tracking import MlflowClient

    dst, env, out = repo_copy
    for stage in [*FINETUNE, *PER_FOLD]:
        assert out.index(f"Running stage '{stage}'") < out.index("Running stage 'report'")
    table = (dst / "reports/tables.md").read_text()
    last, best = table.split("## Last epoch")[1].split("## Best epoch")
    for label in ("pretrained single-task, no fine-tuning", "static MTL", "dynamic (paper)",
                  "raw-pixel PCA, no learning"):
        assert f"| {label} |" in last and f"| {label} |" in best, label
    assert "**Data: the embedded demo**" in table and "Folds 0 of 3" in table
    for name in ("weights_losses.png", "roc.png", "confusion.png"):
        assert (dst / "reports/figures" / name).stat().st_size > 10_000, name
    report = json.loads((dst / "metrics/report.json").read_text())
    assert set(report["methods"]) == {"pretrained", "dynamic", "static", "pixel_pca"}
    assert [c["name"] for c in report["demo_checks"]][:2] == ["alignment demo_oulu", "alignment demo_webface"]
    show = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], dst, env).stdout)
    assert "metrics/report.json" in json.dumps(show)
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dynamic-mtl-face")
    (summary,) = client.search_runs([exp.experiment_id], "tags.stage = 'report'")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{summary.info.run_id}'")
    items = sorted(r.data.tags["item"] for r in children)
    assert items == sorted(f"demo_oulu/fold0/{m}" for m in ("pretrained", "dynamic", "static", "pixel_pca"))
    assert {r.data.tags["group"] for r in children} == {summary.data.tags["group"]}
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id, "report")}
    assert {"report/tables.md", "report/figures"} <= artifacts


def test_finetune_method_params_rerun_only_that_method_and_runtime_params_do_not(repo_copy):
    dst, env, _ = repo_copy
    write_params(dst / "params.yaml", tiny_params(**{**E2E_PARAMS, "finetune.threads": 2,
                                                     "finetune.eval_batch_size": 7, "finetune.device": "cpu",
                                                     "finetune.compile": True, "pretrain.decode": "device",
                                                     "pretrain.compile": True}))
    assert _run([sys.executable, "-m", "dvc", "status", "-q"], dst, env, check=False).returncode == 0
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"finetune.methods.dynamic.lr_weights": 0.0123}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == {"finetune@0-dynamic"}
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS, **{"finetune.common.keep_prob": 0.8}))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout)
    assert set(status) == set(FINETUNE)
    write_params(dst / "params.yaml", tiny_params(**E2E_PARAMS))
