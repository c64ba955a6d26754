"""Training settings for the tests: the repository's ``params.yaml`` values (the one place training settings are
written), with per-test overrides by dotted key.

``finetune_settings(**{"network.input_size": 80, "epochs": 2})`` is ``finetune.common`` with those two values
replaced; likewise :func:`pretrain_settings` and :func:`task_set`. :func:`model_config` and :func:`finetune_spec`
build the model config and the run spec of a CPU test from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.config import load_params
from pipeline.models.network import PLAIN_HEAD, HeadSpec, ModelConfig
from pipeline.settings import (
    FinetuneSettings,
    HeadSettings,
    PretrainRuntime,
    PretrainSettings,
    RuntimeSettings,
    TaskSetSettings,
)
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml")
#: a CPU runtime for in-process runs
CPU = RuntimeSettings(device="cpu", threads=0, eval_batch_size=32, compile=False)
PRETRAIN_CPU = PretrainRuntime(device="cpu", threads=0, eval_batch_size=32, compile=False, workers=0,
                               decode="worker")


def replaced(obj: Any, **changes: Any) -> Any:
    """``obj`` (a frozen settings dataclass, or a mapping of them) with ``changes`` by dotted key
    (``"optimizer.name"``, ``"tasks.expression.head"``)."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = replaced(flat.get(head, obj[head] if isinstance(obj, Mapping) else getattr(obj, head)), **sub)
    return {**obj, **flat} if isinstance(obj, Mapping) else dataclasses.replace(obj, **flat)


def finetune_settings(**changes: Any) -> FinetuneSettings:
    """``params.yaml``'s ``finetune.common`` with ``changes`` (dotted keys)."""
    return replaced(PARAMS.finetune.common, **changes)


def pretrain_settings(**changes: Any) -> PretrainSettings:
    """``params.yaml``'s ``pretrain.train`` with ``changes`` (dotted keys)."""
    return replaced(PARAMS.pretrain.train, **changes)


def task_set(name: str = "fr_fer", **changes: Any) -> TaskSetSettings:
    """A task set of ``params.yaml`` with ``changes`` (dotted keys; ``tasks.<t>`` replaces or adds a task)."""
    return replaced(PARAMS.task_sets[name], **changes)


def heads(n_classes: Mapping[str, int], tasks: TaskSetSettings | None = None) -> tuple[HeadSpec, ...]:
    """One head per task of ``n_classes`` (its head settings from ``tasks``, else a plain linear head)."""
    return tuple(HeadSpec(name, n, tasks.tasks[name].head if tasks and name in tasks.tasks else PLAIN_HEAD)
                 for name, n in n_classes.items())


def model_config(n_classes: Mapping[str, int] | Sequence[HeadSpec], *, tasks: TaskSetSettings | None = None,
                 **network: Any) -> ModelConfig:
    """A model of the fine-tuning settings' network (with ``network`` changes, e.g. ``depth="full"``)."""
    hs = tuple(n_classes) if not isinstance(n_classes, Mapping) else heads(n_classes, tasks)
    s = PARAMS.finetune.common
    return ModelConfig(heads=hs, network=replaced(s.network, **network), align_convention="paper_182_44",
                       crop=s.crop)


def head(hidden: int = 0, relu_logits: bool = False) -> HeadSettings:
    return HeadSettings(hidden=hidden, relu_logits=relu_logits)


def finetune_spec(settings: FinetuneSettings | None = None, tasks: TaskSetSettings | None = None, *,
                  weighting: str = "dynamic", options: Mapping[str, Any] | None = None,
                  n_classes: Mapping[str, int] | None = None, checkpoint: str | None = None,
                  runtime: RuntimeSettings = CPU, epochs: int | None = None) -> Any:
    """A :class:`~pipeline.training.build.FinetuneSpec` for a CPU test (random init unless ``checkpoint``)."""
    from pipeline.training.build import finetune_spec as build
    from pipeline.weighting.options import parse_weighting

    settings = settings or finetune_settings()
    tasks = tasks or task_set()
    n_classes = n_classes or {name: 5 for name in tasks.names}
    return build(settings, tasks, strategy=parse_weighting(weighting, options, tasks.names), epochs=epochs,
                 n_classes=n_classes, class_names={}, align_convention="paper_182_44", checkpoint=checkpoint,
                 runtime=runtime)
