"""The ``disjoint`` params: every bad value a user can write is one params error naming its key; a method's
``transfer`` keys override ``disjoint.common.transfer``; the stage refuses what it cannot run with one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.config import disjoint_transfer, load_params
from pipeline.errors import ParamsError
from stages.app import app
from tests.conftest import tiny_params, write_params


def _load(tmp_path, **overrides):
    return load_params(write_params(tmp_path / "params.yaml", tiny_params(**overrides)))


def test_the_repo_params_define_the_readmes_methods_and_ours():
    params = load_params("params.yaml")
    dj = params.disjoint
    assert {"stl_identity", "stl_expression", "all_in_one", "lel_ltn", "dml_lwf", "distilling", "sa_mtl",
            "sa_mtl_hard", "alternating_none", "dynamic_joint", "sa_mtl_dynamic", "full_labels"} <= set(dj.methods)
    sa = disjoint_transfer(dj.common, dj.methods["sa_mtl"])
    assert (sa.kind, sa.weights, sa.selection, sa.cluster_k, sa.density_t) == (
        "pseudo", ["confidence", "density", "distribution"], "soft", 4, 0.6)
    hard = disjoint_transfer(dj.common, dj.methods["sa_mtl_hard"])
    assert (hard.selection, hard.quantile, hard.cluster_k) == ("hard", 0.8, 3)
    assert disjoint_transfer(dj.common, dj.methods["dml_lwf"]).temperature == 1.0
    assert disjoint_transfer(dj.common, dj.methods["distilling"]).temperature == 2.0
    # a key the method does not set is the common one
    assert disjoint_transfer(dj.common, dj.methods["all_in_one"]).kind == dj.common.transfer.kind == "none"


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("disjoint.methods.sa_mtl_hard.transfer.quantile", 1.0,
     "methods.sa_mtl_hard.transfer.quantile: Input should be less than 1"),
    ("disjoint.methods.sa_mtl.transfer.cluster_k", 0, "methods.sa_mtl.transfer.cluster_k"),
    ("disjoint.methods.sa_mtl.transfer.density_t", 1.5, "methods.sa_mtl.transfer.density_t"),
    ("disjoint.methods.sa_mtl.transfer.weights", ["confidence", "beauty"], "methods.sa_mtl.transfer.weights"),
    ("disjoint.methods.sa_mtl.transfer.softmax", "column", "methods.sa_mtl.transfer.softmax"),
    ("disjoint.methods.sa_mtl.transfer.selection", "greedy", "methods.sa_mtl.transfer.selection"),
    ("disjoint.methods.sa_mtl.transfer.typo", 1, "methods.sa_mtl.transfer.typo"),
    ("disjoint.methods.sa_mtl.transfer.identity_transfer", "pseudo", "not identity classes"),
    ("disjoint.methods.sa_mtl.mode", "sequential", "methods.sa_mtl.mode"),
    ("disjoint.methods.stl_identity.task", "age", "disjoint.methods.stl_identity.task: 'age' is not a task"),
    ("disjoint.methods.all_in_one.task", "identity", "methods.all_in_one.task: give the task for mode single"),
    ("disjoint.run_methods", ["sa_mtl", "nope"], "run_methods: unknown method(s) ['nope']"),
    ("disjoint.reference", "nope", "reference: 'nope' is not in run_methods"),
    ("disjoint.dataset", "nope", "disjoint.dataset: unknown dataset 'nope'"),
    ("disjoint.folds", [0, 12], "disjoint.folds: [0, 12] must be folds in 0..9"),
    ("disjoint.view", "sources", "sources: view sources needs at least two"),
    ("disjoint.common.transfer.first_refresh", "warmup", None),
    ("disjoint.common.joint.epoch", "max", "disjoint.common.joint.epoch"),
    ("disjoint.common.normalise", "mean", "disjoint.common.normalise"),
])
def test_bad_disjoint_params_name_the_key(tmp_path, dotted, value, message):
    if message is None:  # a valid change: warmup with its 3 epochs
        assert _load(tmp_path, **{dotted: value}).disjoint.common.transfer.first_refresh == "warmup"
        return
    with pytest.raises(ParamsError) as err:
        _load(tmp_path, **{dotted: value})
    assert "disjoint" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value).strip()


def test_a_dataset_without_the_task_sets_labels_or_folds_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="disjoint.dataset: 'demo_webface' has no fold settings"):
        _load(tmp_path, **{"disjoint.dataset": "demo_webface"})


@pytest.mark.parametrize(("args", "overrides", "message"), [
    (["--fold", "0", "--method", "nope"], {}, "unknown method 'nope'"),
    (["--fold", "3", "--method", "sa_mtl"], {}, "--fold 3: not in disjoint.folds [0]"),
])
def test_the_stage_refuses_what_it_cannot_run_with_one_line(tmp_path, monkeypatch, args, overrides, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tiny_params(**overrides))
    res = CliRunner().invoke(app, ["--params", "params.yaml", "disjoint_train", *args])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "data/disjoint").exists()


@pytest.mark.parametrize(("init", "message"), [
    ("pretrain", "disjoint.common.init: checkpoint not found: data/pretrain/demo_webface/model.pt (run the pretrain "
                 "stage"),
    ("random", "data/manifests/demo_oulu.parquet not found: run the upstream stages first (dvc repro disjoint_train)"),
])
def test_the_stage_needs_its_upstream_data(tmp_path, monkeypatch, init, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tiny_params(**{"disjoint.common.init": init}))
    res = CliRunner().invoke(app, ["--params", "params.yaml", "disjoint_train", "--fold", "0", "--method", "sa_mtl"])
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "data/disjoint").exists() and not (tmp_path / "metrics/disjoint").exists()
