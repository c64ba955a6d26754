"""End to end on the shared e2e repository (``tests/e2e_repo.py``): every stage by one `dvc repro` (the demo's
generated identity dataset for pretraining, Oulu-CASIA and CK+ layouts for fine-tuning), its outputs, MLflow,
idempotency, and which params re-run which stages."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml

from pipeline.data.manifest import read_manifest
from tests.e2e_repo import (
    ALL_DATASETS,
    CARI,
    DATASETS,
    DISJOINT,
    FINETUNE,
    METHODS,
    PER_FOLD,
    restore,
    run,
    set_params,
)

pytestmark = pytest.mark.e2e

#: images per manifest: Oulu-CASIA 4 subjects x 6 sequences x (first + last 3 frames); the tiny demo 3 x 3
IMAGES = {"oulu": 4 * 6 * 4, "demo_webface": 3 * 3}


def _status(repo) -> set[str]:
    return set(json.loads(run(repo, "dvc", "status", "--json").stdout))


def test_repro_writes_manifests_and_metrics(e2e_repo):
    dst = e2e_repo["dst"]
    for name, n in IMAGES.items():
        df = read_manifest(dst / f"data/manifests/{name}.parquet")
        assert len(df) == n
        metrics = json.loads((dst / f"metrics/manifest/{name}.json").read_text())
        assert metrics["images"] == n and metrics["skipped"] == 0
    # a stage's own metrics are plain files, shown when named (`dvc metrics show` lists the report's summary)
    show = run(e2e_repo, "dvc", "metrics", "show", "--json", "metrics/manifest/oulu.json").stdout
    assert json.loads(show)[""]["data"]["metrics/manifest/oulu.json"]["data"]["images"] == IMAGES["oulu"]
    stages = run(e2e_repo, "dvc", "stage", "list").stdout
    assert "download@oulu" in stages and "manifest@demo_webface" in stages


def test_repro_logged_one_mlflow_run_per_stage(e2e_repo):
    from mlflow.tracking import MlflowClient

    dst = e2e_repo["dst"]
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dynamic-mtl-face")
    assert exp is not None and exp.artifact_location == (dst / "mlruns").as_uri()
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("git.commit")]
    first = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):  # the first repro's run of each stage
        first.setdefault(r.info.run_name, r)
    expected = [f"{stage}@{d}" for stage in ("download", "manifest", "align") for d in ALL_DATASETS]
    expected += [f"folds@{d}" for d in DATASETS] + ["pretrain", *FINETUNE, *PER_FOLD, "report", *CARI, *DISJOINT,
                                                    "disjoint_report"]
    assert sorted(first) == sorted(expected)
    sha = run(e2e_repo, "git", "rev-parse", "HEAD").stdout.strip()
    for r in first.values():
        assert r.info.status == "FINISHED"
        assert r.data.tags["git.commit"] == sha
        assert r.data.tags["dvc.stage"] == r.info.run_name
    manifest_run = first["manifest@oulu"]
    lock = yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    (raw_out,) = lock["download@oulu"]["outs"]
    # hashed from the files when each stage ran, in DVC's format: unchanged inputs show dvc.lock's values
    assert manifest_run.data.tags["input.data/raw/oulu.md5"] == raw_out["md5"]
    outs = {o["path"]: o for stage in lock.values() for o in stage.get("outs", [])}
    for method in METHODS:
        r = first[f"finetune@oulu-0-{method}"]
        assert r.data.tags["input.data/aligned/oulu.md5"] == outs["data/aligned/oulu"]["md5"]
        assert r.data.tags["input.data/manifests/oulu.parquet.md5"] == outs["data/manifests/oulu.parquet"]["md5"]
        # the fold files and the checkpoint it started from
        model = dst / "data/pretrain/demo_webface/model.pt"
        model_md5 = hashlib.md5(model.read_bytes()).hexdigest()
        assert r.data.tags["input.data/pretrain/demo_webface/model.pt.md5"] == model_md5
        assert {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
                for i in r.inputs.dataset_inputs} == {("oulu", "source"), ("oulu fold0", "training"),
                                                      ("oulu fold0 pairs", "evaluation")}
        assert r.data.tags["task_set"] == "fr_fer" and r.data.tags["dataset"] == "oulu"
        steps = client.get_metric_history(r.info.run_id, "weight_identity")
        assert sorted(m.step for m in steps) == [1, 2]  # one epoch of 2 steps
        present = client.get_metric_history(r.info.run_id, "present_expression")
        assert sorted((m.step, m.value) for m in present) == [(1, 1.0), (2, 1.0)]


def test_second_repro_runs_nothing_and_params_hit_only_their_stage(e2e_repo):
    res = run(e2e_repo, "dvc", "repro")
    assert "Data and pipelines are up to date." in res.stdout
    assert run(e2e_repo, "dvc", "status", "-q", check=False).returncode == 0
    set_params(e2e_repo, **{"datasets.oulu.options.keep_last": 2})
    # and the reports, which track the whole `datasets` section (each listed dataset's reader, source and label
    # sets: DVC cannot template a key per list item; re-running them costs seconds and gives the same bytes)
    assert _status(e2e_repo) == {"check_params", "manifest@oulu", "report", "cari_report"}
    restore(e2e_repo)


def test_repro_writes_every_fold_and_pairs(e2e_repo):
    dst, out = e2e_repo["dst"], e2e_repo["out"]
    assert "Running stage 'folds@oulu'" in out
    assert out.index("Running stage 'manifest@oulu'") < out.index("Running stage 'folds@oulu'")
    folds = dst / "data/folds/oulu"
    assert sorted(p.name for p in folds.iterdir()) == sorted(
        [f"fold{k}.json" for k in range(3)] + [f"fold{k}-pairs.parquet" for k in range(3)])
    # 4 subjects in 3 contiguous folds: P001 P002 | P003 | P004
    for k, test in enumerate([["P001", "P002"], ["P003"], ["P004"]]):
        fold = json.loads((folds / f"fold{k}.json").read_text())
        assert fold["test_subjects"] == test and len(fold["train_subjects"]) == 4 - len(test)
    metrics = json.loads((dst / "metrics/folds/oulu.json").read_text())
    # each test subject's 6 neutral first frames are references; per reference and required expression one pair of
    # each type: types 1, 2 (same subject) always, types 3, 4 (another test subject) only in fold 0
    assert metrics["subjects"] == 4 and metrics["pairs"] == (12 + 6 + 6) * 2 * 2 + 12 * 2 * 2
    assert metrics["pairs_skipped_by_reason"] == {f"type{t}:{e}": 12 for t in (3, 4) for e in ("Happiness", "Surprise")}


def test_folds_params_rerun_only_folds_and_run_is_not_a_param(e2e_repo):
    set_params(e2e_repo, **{"folds.run": [0, 1]})
    status = _status(e2e_repo)
    # only the new fold's stages (never run) and the reports that list the folds (the disjoint report: its
    # full-label fine-tuning rows); folds itself is not stale
    new = {f"finetune@{d}-1-{m}" for d in DATASETS for m in ("dynamic", "static")} | {"report", "disjoint_report"}
    assert new <= status
    assert all("-1-" in name or name.endswith("-1") for name in status - {"report", "disjoint_report", "check_params"}
               ), status
    set_params(e2e_repo, **{"folds.seed": 1})
    assert _status(e2e_repo) == {"check_params"} | {f"folds@{d}" for d in DATASETS}
    res = run(e2e_repo, "dvc", "repro", "folds@oulu")  # the params check, then folds: not the finetune stages after it
    assert [line for line in res.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'check_params':", "Running stage 'folds@oulu':"]
    restore(e2e_repo)
    run(e2e_repo, "dvc", "repro")  # back to the built state: folds@oulu again, its outputs unchanged
    assert run(e2e_repo, "dvc", "status", "-q", check=False).returncode == 0


def test_repro_aligns_every_dataset_after_its_manifest(e2e_repo):
    from pipeline.faces.source import FaceSource

    dst, out = e2e_repo["dst"], e2e_repo["out"]
    for name, n in IMAGES.items():
        assert out.index(f"Running stage 'manifest@{name}'") < out.index(f"Running stage 'align@{name}'")
        metrics = json.loads((dst / f"metrics/align/{name}.json").read_text())
        assert metrics["images"] == n and metrics["aligned_fraction"] >= 0.95
        faces = FaceSource(dst / f"data/aligned/{name}")
        assert len(faces) == metrics["aligned"] and faces.read(0).shape == (182, 182, 3)
    assert sorted(p.name for p in (dst / "data/work/align").iterdir()) == sorted(  # work folders cleared
        f"{d}.last-run.json" for d in ALL_DATASETS)
    assert "images_per_second" not in metrics  # timing lives in MLflow and the last-run file, not the DVC metric


def test_align_params_rerun_only_align_and_runtime_params_do_not(e2e_repo):
    set_params(e2e_repo, **{"align.batch_size": 7, "align.workers": 0})
    assert run(e2e_repo, "dvc", "status", "-q", check=False).returncode == 0
    set_params(e2e_repo, **{"align.quality": 90})
    assert _status(e2e_repo) == {"check_params"} | {f"align@{d}" for d in ALL_DATASETS}
    restore(e2e_repo)


def test_repro_finetunes_every_dataset_fold_and_method_after_folds(e2e_repo):
    from pipeline.models.checkpoint import load_model

    dst, out = e2e_repo["dst"], e2e_repo["out"]
    for stage in FINETUNE:
        dataset = stage.split("@")[1].split("-")[0]
        assert out.index(f"Running stage 'folds@{dataset}'") < out.index(f"Running stage '{stage}'")
        assert out.index("Running stage 'pretrain'") < out.index(f"Running stage '{stage}'")
    pretrained, _ = load_model(dst / "data/pretrain/demo_webface/model.pt")
    for method in METHODS:
        model, meta = load_model(dst / f"data/finetune/oulu/fold0-{method}/model.pt")
        assert meta["method"] == method and model.config.network.input_size == 80
        steps = (dst / f"data/finetune/oulu/fold0-{method}/steps.csv").read_text().splitlines()
        assert len(steps) == 1 + 2  # header + epochs × epoch_size
        assert steps[0].endswith("present_identity,present_expression")
        metrics = json.loads((dst / f"metrics/finetune/oulu/fold0-{method}.json").read_text())
        assert metrics["last"]["epoch"] == 1 and set(metrics["best"]) == {"selected_on", "verification",
                                                                          "expression", "authentication"}
        fine = model.state_dict()
        # init: pretrain — the expression branch's blocks start as copies of the pretrained identity branch's, and
        # with the trunk's BN frozen its moving statistics are the pretrained ones
        pre = pretrained.state_dict()
        key = "trunk.conv2d_1a.1.running_mean"
        assert torch.equal(fine[key], pre[key]), key
    pm = json.loads((dst / "metrics/pretrain/demo_webface.json").read_text())
    assert pm["steps"] == 4 and pm["verification"]["last"]["step"] == 4
    show = json.loads(run(e2e_repo, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/summary/ckplus/static.json" in show[""]["data"]
    assert not any((dst / "data/work/finetune").iterdir())  # checkpoints cleared after each finished stage


def test_repro_ends_with_the_report_and_nests_the_fold_runs_under_it(e2e_repo):
    from mlflow.tracking import MlflowClient

    dst, out = e2e_repo["dst"], e2e_repo["out"]
    for stage in [*FINETUNE, *PER_FOLD]:
        assert out.index(f"Running stage '{stage}'") < out.index("Running stage 'report'")
    table = (dst / "reports/tables.md").read_text()
    oulu = table.split("# Face verification with expression and expression recognition: `oulu`")[1]
    oulu = oulu.split("# Face verification with expression and expression recognition:")[0]
    last, best = oulu.split("## Last epoch")[1].split("## Best epoch")
    for label in ("static MTL", "dynamic (paper)", "raw-pixel PCA, no learning"):
        assert f"| {label} |" in last and f"| {label} |" in best, label
    assert "Folds 0 of 3" in oulu
    for name in ("weights_losses.png", "roc.png", "confusion.png"):  # several datasets: one folder each
        assert (dst / "reports/figures/oulu" / name).stat().st_size > 10_000, name
    assert "![ROC of the verification pairs](figures/oulu/roc.png)" in oulu
    report = json.loads((dst / "metrics/report.json").read_text())
    assert set(report["datasets"]) == set(DATASETS)
    section = report["datasets"]["oulu"]
    assert set(section["methods"]) == {"dynamic", "static", "pixel_pca"}
    # real data: no demo targets (their checks have their own tests, and make demo prints them)
    assert section["demo_checks"] == [] and report["demo_passed"] is None
    # `dvc metrics show`: the table's means, one short row per dataset and method, not every stage's details
    show = run(e2e_repo, "dvc", "metrics", "show").stdout
    rows = [line for line in show.splitlines() if line.startswith("metrics/")]
    assert sorted(rows) == rows and len(rows) == len(DATASETS) * 3  # dynamic, static, pixel_pca
    assert all(r.startswith("metrics/summary/") for r in rows)
    assert max(len(line) for line in show.splitlines()) <= 120
    dynamic = json.loads((dst / "metrics/summary/oulu/dynamic.json").read_text())
    assert dynamic == section["methods"]["dynamic"]["best"]  # finetune.common.selection: test_fold
    client = MlflowClient(f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dynamic-mtl-face")
    summary = min(client.search_runs([exp.experiment_id], "tags.stage = 'report'"), key=lambda r: r.info.start_time)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{summary.info.run_id}'")
    items = sorted(r.data.tags["item"] for r in children)
    assert items == sorted(f"{d}/fold0/{m}" for d in DATASETS for m in ("dynamic", "static", "pixel_pca"))
    for d in DATASETS:  # each dataset's runs share its group key, which the report run records
        groups = {r.data.tags["group"] for r in children if r.data.tags["dataset"] == d}
        assert groups == {summary.data.tags[f"group.{d}"]}, d
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id, "report")}
    assert {"report/tables.md", "report/figures"} <= artifacts


def test_finetune_method_params_rerun_only_that_method_and_runtime_params_do_not(e2e_repo):
    set_params(e2e_repo, **{"finetune.runtime.threads": 2, "finetune.runtime.eval_batch_size": 7,
                            "finetune.runtime.device": "cpu", "finetune.runtime.compile": True,
                            "pretrain.runtime.decode": "device", "pretrain.runtime.compile": True})
    assert run(e2e_repo, "dvc", "status", "-q", check=False).returncode == 0
    set_params(e2e_repo, **{"finetune.methods.dynamic.lr_weights": 0.0123})
    assert _status(e2e_repo) == {"check_params"} | {f"finetune@{d}-0-dynamic" for d in DATASETS}
    set_params(e2e_repo, **{"finetune.common.network.keep_prob": 0.8})
    assert _status(e2e_repo) == {"check_params", *FINETUNE}
    restore(e2e_repo)


def test_a_params_typo_stops_repro_before_any_stage_loses_its_outputs(e2e_repo):
    """DVC deletes a stage's outputs before its command runs: the params check runs first and fails, so no stage
    starts and every output stays as it was."""
    dst = e2e_repo["dst"]
    outputs = {p: p.read_bytes() for folder in ("data", "metrics", "reports") for p in sorted((dst / folder).rglob("*"))
               if p.is_file() and "work" not in p.relative_to(dst).parts}
    params = dst / "params.yaml"
    text = params.read_text()
    assert text.count("max_skip_fraction:") == 1
    params.write_text(text.replace("max_skip_fraction:", "max_skip_fracton:"))
    try:
        res = run(e2e_repo, "dvc", "repro", check=False)
        assert res.returncode != 0
        assert "manifest.max_skip_fracton: unknown key" in res.stderr + res.stdout
        ran = [line for line in res.stdout.splitlines() if line.startswith("Running stage")]
        assert ran == ["Running stage 'check_params':"]
        after = {p: p.read_bytes() for p in outputs if p.is_file()}
        assert after == outputs  # nothing deleted, nothing rewritten
    finally:
        params.write_text(text)
    assert run(e2e_repo, "dvc", "status", "-q", check=False).returncode == 0
