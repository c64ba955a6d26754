"""params.yaml validation: every bad key or value is an error that names it."""

from __future__ import annotations

import pytest

from pipeline.config import StageParams, load_params
from pipeline.errors import ParamsError
from tests.conftest import REPO, tiny_params, write_params


def test_repo_params_validate():
    p = load_params(REPO / "params.yaml")
    assert set(p.datasets) >= {"demo_oulu", "demo_webface"}
    assert p.datasets["demo_oulu"].role == "finetune"
    assert p.datasets["demo_webface"].role == "pretrain"
    assert p.label_sets["oulu_six"].classes[0] == "Anger"


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("datasets.demo_oulu.source.n_subject", 3, "datasets.demo_oulu.source.n_subject: unknown key"),
        ("manifest.chek", "decode", "manifest.chek: unknown key"),
        ("manifest.check", "full", "manifest.check: Input should be 'decode' or 'header'"),
        ("datasets.demo_oulu.reader", "oulu", "datasets.demo_oulu.reader"),
        ("datasets.demo_oulu.label_set", "nope", "unknown label set 'nope'"),
        ("datasets.demo_oulu.source.frames", [9, 6], "frames must be [min, max]"),
        ("datasets.demo_webface.source.first_identity", 2, "share identities [2, 3)"),
        ("label_sets.oulu_seven.neutral", "Calm", "neutral class 'Calm' is not in classes"),
        ("datasets.demo_oulu.source.expressions", ["Angry"], "expressions: unknown ['Angry']"),
        ("datasets.demo_oulu.source.expressions", ["Anger", "Anger"], "without repeats"),
        ("finetune.common.bn_decay", 1.0, "finetune.common.bn_decay: Input should be less than 1"),
        ("finetune.methods.pretrained.epochs", -1, "finetune.methods.pretrained.epochs: Input should be greater"),
        ("pretrain.train.lr_boundaries", [80, 60], "lr_boundaries must be increasing steps"),
        ("pretrain.train.verification.dataset", "demo_webface",
         "pretrain.train.verification.dataset: 'demo_webface' has no fold settings"),
        ("pretrain.workers", -1, "pretrain.workers: Input should be greater than or equal to 0"),
        ("pretrain.decode", "gpu", "pretrain.decode: Input should be 'worker' or 'device'"),
        ("pretrain.train.optimizer", "lamb", "pretrain.train.optimizer"),
        ("datasets.demo_oulu.options.keep_lst", 3,
         "datasets.demo_oulu: Value error, options: unknown option 'keep_lst'"),
    ],
)
def test_bad_params_name_the_key(tmp_path, dotted, value, message):
    path = write_params(tmp_path / "params.yaml", tiny_params(**{dotted: value}))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _lfw_entry(**source):
    return {"reader": "lfw", "root": "data/raw/lfw/lfw", "role": "eval", "source": {"kind": "lfw", **source},
            "options": {}, "expected": {}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"checksum": "abc"}, "datasets.lfw.source.checksum: Value error, expected md5:<32 hex digits>"),
        ({"url": "ftp://mirror/lfw.tgz"}, "datasets.lfw.source.url: Value error, expected an http:// or https:// URL"),
        ({"pairs_checksum": "md5:" + "0" * 31}, "datasets.lfw.source.pairs_checksum"),
    ],
)
def test_bad_download_source(tmp_path, source, message):
    params = tiny_params()
    params["datasets"]["lfw"] = _lfw_entry(**source)
    with pytest.raises(ParamsError) as err:
        load_params(write_params(tmp_path / "params.yaml", params))
    assert message in str(err.value)


@pytest.mark.parametrize("root", ["data/raw/ck", "data/raw", "./data/manifests/x", "metrics/ck"])
def test_licensed_data_inside_generated_folders_is_refused(tmp_path, monkeypatch, root):
    """The pipeline replaces data/raw/<name> and friends: licensed data there would be deleted."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    params["datasets"]["ck"] = {"reader": "ckplus", "root": root, "role": "finetune", "label_set": "ckplus_eight",
                                "source": {"kind": "licensed"}, "options": {}, "expected": {}}
    with pytest.raises(ParamsError, match="lies in a folder the pipeline writes and deletes"):
        load_params(write_params(tmp_path / "params.yaml", params))
    params["datasets"]["ck"]["root"] = str(tmp_path / "datasets" / "CK+")
    assert load_params(write_params(tmp_path / "params.yaml", params)).datasets["ck"].reader == "ckplus"


def test_missing_tracked_key_is_named(tmp_path):
    params = tiny_params()
    del params["datasets"]["demo_webface"]["expected"]
    with pytest.raises(ParamsError, match="datasets.demo_webface.expected: Field required"):
        load_params(write_params(tmp_path / "params.yaml", params))


def test_unknown_top_level_section(tmp_path):
    params = tiny_params()
    params["trian"] = {"lr": 1}
    with pytest.raises(ParamsError, match="trian: unknown key"):
        load_params(write_params(tmp_path / "params.yaml", params))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_stage_params_refuse_undeclared_sections():
    sp = StageParams(load_params(REPO / "params.yaml"), ["datasets.demo_oulu", "demo"])
    assert sp.get("datasets.demo_oulu").reader == "oulu_casia"
    assert sp.get("datasets.demo_oulu.source").n_subjects == 40
    with pytest.raises(KeyError, match="not declared"):
        sp.get("manifest")
    with pytest.raises(KeyError, match="not declared"):
        sp.get("datasets.demo_webface")
    flat = sp.as_flat_dict()
    assert flat["datasets.demo_oulu.source.n_subjects"] == 40
    assert flat["demo.seed"] == 2019
    assert not any(k.startswith("manifest") for k in flat)
