"""Construction of everything one fine-tuning run steps (torch only, shared by the stage and ``bench/train.py``).

:class:`FinetuneSpec` holds a run's settings: ``finetune.common`` and the task set as they are in params (the
settings model of :mod:`pipeline.settings`), the method, and what the stage resolved (the checkpoint to start from,
the classes of each task, the device); :func:`finetune_spec` is the one conversion from those to a spec.
:func:`build_training` makes the model (random or from a checkpoint, docs/method.md §4.5 path A), the weighting
strategy, the main optimiser (network + the strategy's main parameters), the strategy's own update, the center
matrices and the :class:`~pipeline.training.step.TrainStep` binding them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.losses.center import CenterLoss
from pipeline.models.network import FEATURES, HeadSpec, ModelConfig, MultiTaskInceptionResNetV1
from pipeline.models.pretrained import load_pretrained
from pipeline.settings import FinetuneSettings, OptimizerSettings, RuntimeSettings, TaskSetSettings
from pipeline.training.optim import build_optimizer
from pipeline.training.schedule import LrSchedule, schedule_from
from pipeline.training.step import TrainStep
from pipeline.weighting.base import Weighting
from pipeline.weighting.options import WeightingChoice
from pipeline.weighting.registry import build_strategy

__all__ = ["FinetuneSpec", "TrainingParts", "build_model", "build_own_optimizer", "build_training", "finetune_spec"]


@dataclass(frozen=True)
class FinetuneSpec:
    """Everything one fine-tuning run needs besides the data.

    Attributes:
        settings: ``finetune.common`` with the method's overrides (its ``epochs``; 0 = evaluate the initial model).
        tasks: the task set ``settings.task_set`` names.
        strategy: the method's weighting, parsed for these tasks (every option's default filled in).
        model: the network (heads: one per task, with its classes).
        checkpoint: the checkpoint ``settings.init`` resolves to (None = random initialisation: BN trains
            everywhere). One of ours (``model.pt``) or a facenet-pytorch ``InceptionResnetV1`` state dict; its trunk
            and first branch initialise the model, ``tasks.copy_branches`` copy branches, and
            ``settings.freeze_pretrained_bn``/``pretrained_dropout`` apply (docs/method.md §4.3, §4.5).
        runtime: device (resolved: ``cpu``, ``cuda``, ``cuda:<n>``), threads, evaluation batch, ``compile`` (the
            training step's forward pass through ``torch.compile(model)``; evaluation stays eager).
    """

    settings: FinetuneSettings
    tasks: TaskSetSettings
    strategy: WeightingChoice
    model: ModelConfig
    checkpoint: str | None
    runtime: RuntimeSettings
    #: rows of each center matrix by owner task where fewer than its classes (``cari.common.centers.rows:
    #: train_ids``); a label beyond them meets a zero center and moves nothing
    center_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: the denominator of a task trained on soft targets (the disjoint-datasets runs; docs/disjoint.md#the-loss)
    target_normalise: str = "rows"

    @functools.cached_property
    def schedule(self) -> LrSchedule:
        """The network's learning rate per 1-based epoch (read once: a schedule file is parsed at the first
        access)."""
        return schedule_from(self.settings.schedule)

    @property
    def task_names(self) -> list[str]:
        return self.tasks.names


def finetune_spec(settings: FinetuneSettings, tasks: TaskSetSettings, *, strategy: WeightingChoice,
                  epochs: int | None, n_classes: Mapping[str, int], class_names: Mapping[str, Sequence[str]],
                  align_convention: str, checkpoint: str | None, runtime: RuntimeSettings,
                  center_rows: Mapping[str, int] | None = None) -> FinetuneSpec:
    """The spec of one run from its settings: the method's weighting (parsed for ``tasks`` by
    :func:`~pipeline.weighting.options.parse_weighting`) and ``epochs`` (the method's or None; overrides
    ``settings.epochs``); ``n_classes`` (every task) and ``class_names`` (the tasks labelled by a label set) come from
    the data.

    Raises:
        ValueError: a task shares a center matrix whose task has another number of classes (one line).
    """
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    for name, task in tasks.tasks.items():
        owner = tasks.matrix_owner(name)
        if task.center is not None and n_classes[owner] != n_classes[name]:
            raise ValueError(f"task {name!r} shares the center matrix of {owner!r}, but has {n_classes[name]} "
                             f"classes where {owner!r} has {n_classes[owner]}")
    heads = tuple(HeadSpec(name, int(n_classes[name]), task.head) for name, task in tasks.tasks.items())
    model = ModelConfig(heads=heads, network=settings.network, align_convention=align_convention,
                        crop=settings.crop, class_names={k: list(v) for k, v in class_names.items()})
    rows = {k: int(v) for k, v in (center_rows or {}).items() if int(v) < n_classes[k]}
    return FinetuneSpec(settings=settings, tasks=tasks, strategy=strategy, model=model, checkpoint=checkpoint,
                        runtime=runtime, center_rows=rows)


@dataclass
class TrainingParts:
    """What :func:`build_training` returns."""

    model: MultiTaskInceptionResNetV1
    strategy: Weighting
    optimizer: torch.optim.Optimizer
    own_optimizer: torch.optim.Optimizer | None
    centers: nn.ModuleDict | None
    step: TrainStep


def build_model(spec: FinetuneSpec, device: torch.device) -> MultiTaskInceptionResNetV1:
    """The network at its initial weights (seed the global RNG first): random, or the checkpoint's trunk and first
    branch with ``copy_branches`` applied.

    Raises:
        CheckpointError: the checkpoint does not fit the model.
    """
    model = MultiTaskInceptionResNetV1(spec.model)
    if spec.checkpoint:
        load_pretrained(model, spec.checkpoint, spec.model)
        for source, target in spec.tasks.copy_branches:
            model.copy_branch(source, target)
    model = model.to(device)
    if spec.settings.precision.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _centers(spec: FinetuneSpec) -> nn.ModuleDict | None:
    """One center matrix per task that owns one (``center.matrix: own``), sized by that task's classes (the tasks
    sharing it have as many: :func:`finetune_spec` checks), or by ``spec.center_rows``."""
    tasks = spec.tasks
    n_classes = {h.name: h.n_classes for h in spec.model.heads}
    owners: dict[str, CenterLoss] = {}
    for name, task in tasks.tasks.items():
        if task.center is None:
            continue
        owner = tasks.matrix_owner(name)
        if owner not in owners:
            rows = spec.center_rows.get(owner)
            owners[owner] = CenterLoss(rows or n_classes[owner], FEATURES, alpha=tasks.tasks[owner].center.alpha,
                                       beyond="zero" if rows else "error")
    return nn.ModuleDict(owners) if owners else None


def build_own_optimizer(strategy: Weighting, weights_optimizer: OptimizerSettings, network_lr: float
                        ) -> tuple[torch.optim.Optimizer | None, float]:
    """The update of a strategy's own parameters and its clip norm: ``weights_optimizer`` (clipped to its
    ``clip_norm``) or, when the strategy asks for one (``own_update == "gradient_step"``, GradNorm's Algorithm 1), a
    plain gradient step ``θ ← θ − lr·∇θ`` without clipping; ``(None, 0)`` when it has no own parameters. The rate is
    ``strategy.own_lr`` at ``network_lr``."""
    own = list(strategy.own_parameters())
    if not own:
        return None, 0.0
    lr = strategy.own_lr.at(network_lr)
    if strategy.own_update == "gradient_step":
        return torch.optim.SGD(own, lr=lr, momentum=0.0), 0.0
    return build_optimizer(weights_optimizer, own, lr), weights_optimizer.clip_norm


def build_training(spec: FinetuneSpec, device: torch.device) -> TrainingParts:
    """Model, strategy, optimisers (at the schedule's epoch-1 rate), centers and the step function on ``device``.

    Seed the global RNG first: the model's and the weighting unit's initial weights come from it.

    The strategy's own parameters are updated as :func:`build_own_optimizer` says.
    """
    s = spec.settings
    model = build_model(spec, device)
    feature_dim = int(np.prod(model.feature_shape()))
    strategy = build_strategy(spec.strategy, spec.task_names, feature_dim).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(strategy.main_parameters())
    lr0 = spec.schedule.at(1)
    optimizer = build_optimizer(s.optimizer, params, lr0)
    own_optimizer, own_clip = build_own_optimizer(strategy, s.weights_optimizer, lr0)
    centers = _centers(spec)
    if centers is not None:
        centers = centers.to(device)
    forward = torch.compile(model) if spec.runtime.compile else None
    step = TrainStep(model, strategy, spec.tasks, optimizer, own_optimizer, centers, clip_norm=s.optimizer.clip_norm,
                     own_clip_norm=own_clip, amp=s.precision.amp, forward=forward,
                     target_normalise=spec.target_normalise)
    return TrainingParts(model, strategy, optimizer, own_optimizer, centers, step)
