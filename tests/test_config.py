"""params.yaml validation: every bad key or value is an error that names it."""

from __future__ import annotations

import pytest

from pipeline.config import STANDARD_LABEL_SETS, StageParams, load_params
from pipeline.errors import ParamsError
from tests.conftest import REPO, tiny_params, write_params


def test_repo_params_validate():
    p = load_params(REPO / "params.yaml")
    assert set(p.datasets) >= {"demo_oulu", "demo_webface"}
    assert p.datasets["demo_oulu"].role == "finetune"
    assert p.datasets["demo_webface"].role == "pretrain"
    assert p.datasets["demo_oulu"].label_sets["expression"] == STANDARD_LABEL_SETS["oulu_six"]
    assert STANDARD_LABEL_SETS["oulu_six"].classes[0] == "Anger"
    assert p.task_sets[p.finetune.common.task_set].names == ["identity", "expression"]


CENTER = {"factor": 0.1, "alpha": 0.5, "embedding": "own", "matrix": "own", "updates": True}


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("datasets.demo_oulu.source.n_subject", 3, "datasets.demo_oulu.source.n_subject: unknown key"),
        ("manifest.chek", "decode", "manifest.chek: unknown key"),
        ("manifest.check", "full", "manifest.check: Input should be 'decode' or 'header'"),
        ("datasets.demo_oulu.reader", "oulu", "datasets.demo_oulu.reader"),
        ("datasets.demo_oulu.label_sets.expression", "nope", "unknown standard label set 'nope'"),
        ("datasets.demo_oulu.source.frames", [9, 6], "frames must be [min, max]"),
        ("datasets.demo_webface.source.first_identity", 2, "share identities [2, 3)"),
        ("datasets.demo_oulu.label_sets.expression", {"classes": ["A", "B"], "neutral": "Calm"},
         "neutral class 'Calm' is not in classes"),
        ("datasets.demo_oulu.source.expressions", ["Angry"], "expressions: unknown ['Angry']"),
        ("datasets.demo_oulu.source.expressions", ["Anger", "Anger"], "without repeats"),
        ("finetune.common.network.bn_decay", 1.0, "finetune.common.network.bn_decay: Input should be less than 1"),
        ("finetune.common.optimizer.lr", 0.1, "finetune.common.optimizer.lr: unknown key (misspelled?)"),
        ("finetune.methods.pretrained.epochs", -1, "finetune.methods.pretrained.epochs: Input should be greater"),
        ("pretrain.train.schedule.boundaries", [80, 60], "pretrain.train.schedule: boundaries must be increasing"),
        ("pretrain.train.schedule.file", "data/protocols/learning_rate_schedule_classifier_oulucasia.txt",
         "pretrain.train.schedule: file replaces lr and boundaries: leave boundaries empty"),
        ("pretrain.train.schedule", {"lr": 0.1, "boundaries": [], "decay": 0.1,
                                     "file": "data/protocols/learning_rate_schedule_classifier_oulucasia.txt"},
         "pretrain.train: schedule.file: schedule files are epoch-keyed"),
        ("finetune.common.schedule.file", "/tmp/schedule.txt",
         "file '/tmp/schedule.txt' must lie under data/protocols/"),
        ("pretrain.train.verification.dataset", "demo_webface",
         "pretrain.train.verification.dataset: 'demo_webface' has no fold settings"),
        ("pretrain.runtime.workers", -1, "pretrain.runtime.workers: Input should be greater than or equal to 0"),
        ("pretrain.runtime.decode", "gpu", "pretrain.runtime.decode: Input should be 'worker' or 'device'"),
        ("finetune.runtime.device", "gpu", "finetune.runtime: device must be auto, cpu, cuda or cuda:<n>"),
        ("pretrain.train.optimizer.name", "lamb", "pretrain.train.optimizer.name"),
        ("datasets.demo_oulu.options.keep_lst", 3, "datasets.demo_oulu: options: unknown option 'keep_lst'"),
        # task sets: a label the manifest lacks, a center naming a missing task, an evaluation kind the library
        # lacks, a weighting that cannot serve that many tasks, a dataset listed twice, an unknown task set
        ("task_sets.fr_fer.tasks.expression.label", "emotion",
         "task_sets.fr_fer.tasks.expression.label: 'emotion' is neither a manifest label column"),
        ("task_sets.fr_fer.tasks.expression.center", {**CENTER, "matrix": "pose"},
         "task_sets.fr_fer: tasks.expression.center.matrix: 'pose' is neither 'own' nor a task of this set"),
        ("task_sets.fr_fer.tasks.expression.center", {**CENTER, "embedding": "pose"},
         "tasks.expression.center.embedding: 'pose' is neither 'own' nor a task"),
        ("task_sets.fr_fer.tasks.identity.evaluation", ["retrieval"],
         "task_sets.fr_fer.tasks.identity.evaluation.0: Input should be 'verification', 'classification', "
         "'identification' or 'cross_modal'"),
        ("task_sets.fr_fer.tasks.expression.evaluation", ["verification"],
         "verification is the evaluation of one task at most"),
        ("task_sets.fr_fer.copy_branches", [["identity", "pose"]], "copy_branches.0: ['identity', 'pose'] must name"),
        ("finetune.methods.static.weights", [0.2, 0.3, 0.5],
         "finetune.methods.static: weighting 'static': option 'weights' must be a list of 2 finite numbers"),
        ("finetune.methods.dynamic.base", [0.0], "finetune.methods.dynamic: weighting 'dynamic': option 'base'"),
        ("finetune.methods.single_expression.weighting", "single_pose",
         "finetune.methods.single_expression: unknown weighting 'single_pose'"),
        ("finetune.datasets", ["demo_oulu", "demo_oulu"], "finetune: datasets: 'demo_oulu' is listed twice"),
        ("finetune.datasets", ["demo_webface"], "finetune.datasets: 'demo_webface' has no fold settings"),
        ("finetune.common.task_set", "cari3", "finetune.common.task_set: unknown task set 'cari3'"),
        ("task_sets.fr_fer.tasks", {}, "task_sets.fr_fer: tasks: a task set needs at least one task"),
        ("datasets.demo_cavi.protocol.downsample", 7,
         "datasets.demo_cavi: protocol.downsample: 7, but the demo's pair file is written for source.downsample 20"),
        ("datasets.demo_cavi.reader", "webcaricature", "protocol.kind: 'cavi' does not fit reader 'webcaricature'"),
        ("datasets.demo_webcari.source.layout", "cavi", "source.layout: 'cavi' is not the layout reader"),
        ("cari.datasets", ["demo_oulu"], "cari.datasets: dataset 'demo_oulu' has no caricature protocol"),
        ("cari.common.centers.tasks", ["verif", "nose"], "cari.common.centers.tasks: ['nose'] are not tasks"),
        ("cari.common.centers.policy", "shared_b2", "cari.common.centers.policy: Input should be"),
        ("cari.common.selection", "val_subjects", "selection: val_subjects holds out training subjects"),
        ("cari.methods.split", {"weighting": "static"}, "methods: 'split' is reserved"),
        ("cari.methods.dynamic.variant", "vgg", "cari.methods.dynamic: weighting 'dynamic': option 'variant'"),
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
            "options": {}, "expected": {}, "label_sets": {}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"checksum": "abc"}, "datasets.lfw.source.checksum: expected md5:<32 hex digits>"),
        ({"url": "ftp://mirror/lfw.tgz"}, "datasets.lfw.source.url: expected an http:// or https:// URL"),
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
    params["datasets"]["ck"] = {"reader": "ckplus", "root": root, "role": "finetune",
                                "label_sets": {"expression": "ckplus_eight"}, "source": {"kind": "licensed"},
                                "options": {}, "expected": {}}
    with pytest.raises(ParamsError, match="lies in a folder the pipeline writes and deletes"):
        load_params(write_params(tmp_path / "params.yaml", params))
    params["datasets"]["ck"]["root"] = str(tmp_path / "datasets" / "CK+")
    assert load_params(write_params(tmp_path / "params.yaml", params)).datasets["ck"].reader == "ckplus"


def test_missing_tracked_key_is_named(tmp_path):
    params = tiny_params()
    del params["datasets"]["demo_webface"]["expected"]
    with pytest.raises(ParamsError, match="datasets.demo_webface.expected: missing key"):
        load_params(write_params(tmp_path / "params.yaml", params))


def test_every_training_setting_is_written_in_params(tmp_path):
    """No training setting has a default in code: a missing one is an error naming it, not a silent value."""
    params = tiny_params()
    del params["finetune"]["common"]["optimizer"]["momentum"]
    del params["pretrain"]["train"]["center_loss"]
    with pytest.raises(ParamsError) as err:
        load_params(write_params(tmp_path / "params.yaml", params))
    assert "finetune.common.optimizer.momentum: missing key" in str(err.value)
    assert "pretrain.train.center_loss: missing key" in str(err.value)


def test_a_key_given_twice_is_named_with_its_line(tmp_path):
    """YAML keeps the last of two equal keys: a task given twice (or any key) is an error instead."""
    text = (REPO / "params.yaml").read_text()
    twice = text.replace("      expression:\n        label: expression", "      identity:\n        label: expression")
    assert twice != text
    path = tmp_path / "params.yaml"
    path.write_text(twice)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    line = twice[:twice.index("      identity:\n        label: expression")].count("\n") + 1
    assert f"task_sets.fr_fer.tasks.identity: key given twice (line {line})" in str(err.value)
    assert "\n" not in str(err.value)


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
