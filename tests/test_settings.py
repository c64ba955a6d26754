"""The training settings model: every setting and default declared once, no renames between params and code, and
the same values whether params are validated (pydantic) or read plain (the benchmarks on a torch-only machine)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections import defaultdict

import pytest
import yaml

import pipeline.settings as settings_module
from pipeline.config import FinetuneConfig, FinetuneMethod, PretrainConfig, load_params, plain
from pipeline.errors import ParamsError
from pipeline.models.network import HeadSpec, ModelConfig
from pipeline.settings import (
    CariSettings,
    FinetuneSettings,
    PretrainSettings,
    TaskCenter,
    TaskSetSettings,
    from_mapping,
)
from pipeline.training.build import FinetuneSpec
from pipeline.training.pretrain import PretrainSpec
from tests.conftest import REPO, tiny_params, write_params

#: the settings model: every dataclass of pipeline/settings.py
SETTINGS = [c for c in vars(settings_module).values()
            if inspect.isclass(c) and dataclasses.is_dataclass(c) and c.__module__ == settings_module.__name__
            and c is not settings_module.Bound]
#: what else declares training fields: the params sections around them, the run specs, the model's config, the
#: benchmarks
AROUND = [PretrainConfig, FinetuneConfig, FinetuneMethod, FinetuneSpec, PretrainSpec, ModelConfig, HeadSpec]
#: names declared by two classes for two different things (anything else declared twice must be one type)
DIFFERENT = {
    "dataset": "pretrain.train.dataset (the training data) and its verification.dataset (the pairs)",
    "epochs": "finetune.common.epochs and a method block's override of it",
    "name": "an optimiser's name and a model head's (task) name",
    "tasks": "a task set's tasks and the task set a run spec holds",
    "selection": "finetune.common.selection (the best epoch) and disjoint transfer.selection (the pseudo-label rule)",
    "temperature": "disjoint joint.temperature (the sources' shares) and transfer.temperature (the distillation)",
}


def _own_fields(cls: type) -> dict[str, object]:
    """The fields ``cls`` itself declares (not inherited), with their resolved types."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: hints[name] for name in cls.__dict__.get("__annotations__", {})}


def test_every_field_is_declared_by_one_class_or_is_one_shared_type():
    from bench.train import StageSettings

    owners: dict[str, list[tuple[str, object]]] = defaultdict(list)
    for cls in [*SETTINGS, *AROUND, StageSettings]:
        for name, tp in _own_fields(cls).items():
            owners[name].append((cls.__name__, tp))
    for name, declared in owners.items():
        if len(declared) == 1 or name in DIFFERENT:
            continue
        types = {tp for _, tp in declared}
        where = [c for c, _ in declared]
        if types <= {ModelConfig, str | None} and len(types) == 1:
            continue  # the run specs' model and checkpoint
        assert types <= set(SETTINGS), (
            f"{name!r} is declared by {where}: a setting is declared once; only a shared settings sub-model (or "
            "the run specs' model and checkpoint) may appear in several classes")
        common = set.intersection(*({b for b in tp.__mro__ if b in SETTINGS} for tp in types))
        assert common, f"{name!r} is declared by {where} with unrelated settings types {types}"
    # every exception is still needed (a stale entry would let a future duplicate of that name through)
    for name in DIFFERENT:
        assert len(owners[name]) >= 2, (name, owners[name])


def test_no_training_setting_has_a_default_in_code():
    """params.yaml is the one place a training setting's value is written."""
    for cls in SETTINGS:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (
                f"{cls.__name__}.{f.name} has a default in code")
    for cls in (PretrainConfig, FinetuneConfig):
        for name in ("runtime", "train", "common", "datasets"):
            if name in cls.model_fields:
                assert cls.model_fields[name].is_required(), (cls.__name__, name)


def test_the_run_specs_hold_the_settings_as_they_are():
    """No renames and no copies: a spec carries the settings object and only adds what the stage resolves."""
    for spec, family in ((FinetuneSpec, FinetuneSettings), (PretrainSpec, PretrainSettings)):
        fields = {f.name for f in dataclasses.fields(spec)}
        assert "settings" in fields
        assert typing.get_type_hints(spec)["settings"] is family
        assert not fields & {f.name for f in dataclasses.fields(family)}, (spec.__name__, fields)


def test_plain_reading_gives_what_validation_gives():
    """The benchmarks read params.yaml without pydantic: the same settings objects as the stages'."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    assert from_mapping(FinetuneSettings, raw["finetune"]["common"]) == params.finetune.common
    assert from_mapping(PretrainSettings, raw["pretrain"]["train"]) == params.pretrain.train
    for name, ts in raw["task_sets"].items():
        assert from_mapping(TaskSetSettings, ts) == params.task_sets[name]
    # and the validated settings are the params file's keys, unrenamed
    assert plain(params.finetune.common) == _numbers(raw["finetune"]["common"])
    assert plain(params.pretrain.train) == _numbers(raw["pretrain"]["train"])


def _numbers(value):
    """YAML's ints where the settings hold floats (``epochs`` stays an int: compared by value)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["optimizer"].update(lrr=1), "FinetuneSettings.optimizer.lrr: unknown key"),
    (lambda d: d["crop"].pop("flip"), "FinetuneSettings.crop.flip: missing"),
    (lambda d: d.update(optimizer="adam"), "FinetuneSettings.optimizer: expected a mapping"),
])
def test_plain_reading_names_a_bad_key(change, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["finetune"]["common"]
    change(raw)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        from_mapping(FinetuneSettings, raw)


def _keys(value) -> object:
    """The nested key structure of a params block (lists and scalars as leaves)."""
    return {k: _keys(v) for k, v in value.items()} if isinstance(value, dict) else None


@pytest.mark.parametrize(("path", "family"), [
    (("pretrain", "train"), PretrainSettings),
    (("finetune", "common"), FinetuneSettings),
    (("task_sets", "fr_fer"), TaskSetSettings),
    (("task_sets", "cari"), TaskSetSettings),
    (("cari", "common"), CariSettings),
])
def test_the_paper_settings_file_validates_and_has_the_demo_keys(path, family):
    """docs/paper_params.yaml holds the original's values (no code default does): each block must validate and be
    copyable over params.yaml's block key for key."""
    from pydantic import TypeAdapter

    paper = yaml.safe_load((REPO / "docs" / "paper_params.yaml").read_text())
    demo = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in path:
        paper, demo = paper[key], demo[key]
    assert TypeAdapter(family).validate_python(paper) == from_mapping(family, paper)
    assert _keys(paper) == _keys(demo)
    if family is FinetuneSettings:  # the original's fine-tuning recipe (decisions 2 and 7)
        assert (paper["optimizer"]["name"], paper["schedule"]["lr"], paper["batch_size"]) == ("rmsprop_tf1", 1e-4, 90)
    if family is CariSettings:  # the original CaVI command: TF1 RMSProp on the cavi schedule file, batch 256
        assert (paper["optimizer"]["name"], paper["batch_size"], paper["centers"]["policy"]) == (
            "rmsprop_tf1", 256, "shared_b1")


def test_only_pretrainings_center_loss_has_a_form(tmp_path):
    """``pretrain.train.center_loss.form``: metrics_loss (params.yaml) | facenet; anything else is a one-line error
    naming the key and the choices; a fine-tuning task's ``center`` has no form."""
    assert load_params(REPO / "params.yaml").pretrain.train.center_loss.form == "metrics_loss"
    assert "form" not in {f.name for f in dataclasses.fields(TaskCenter)}
    facenet = load_params(write_params(tmp_path / "a.yaml", tiny_params(**{"pretrain.train.center_loss.form":
                                                                           "facenet"})))
    assert facenet.pretrain.train.center_loss.form == "facenet"
    for dotted, message in (
        ("pretrain.train.center_loss.form", "pretrain.train.center_loss.form: Input should be 'metrics_loss' or "
                                            "'facenet'"),
        ("task_sets.fr_fer.tasks.identity.center.form", "task_sets.fr_fer.tasks.identity.center.form: unknown key"),
    ):
        with pytest.raises(ParamsError) as err:
            load_params(write_params(tmp_path / "b.yaml", tiny_params(**{dotted: "wen"})))
        assert message in str(err.value) and "\n" not in str(err.value)
