"""Construction of everything one training run steps (torch only, shared by the stage and ``bench/train.py``).

:class:`FinetuneSpec` holds a run's settings; :func:`build_training` makes the model (random or from a checkpoint,
spec §4.5 path A), the weighting strategy, the main optimiser (network + the strategy's main parameters), the
strategy's own optimiser, the center-loss state and the :class:`~pipeline.training.step.TrainStep` binding them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

import pipeline.weighting as _weighting
from pipeline.losses.center import CenterLoss
from pipeline.models.network import ModelConfig, MultiTaskInceptionResNetV1
from pipeline.models.pretrained import load_pretrained
from pipeline.training.optim import build_optimizer
from pipeline.training.schedule import LrSchedule
from pipeline.training.step import TaskSpec, TrainStep
from pipeline.weighting.base import Weighting

__all__ = ["FinetuneSpec", "TrainingParts", "build_model", "build_training"]


@dataclass
class FinetuneSpec:
    """Everything one fine-tuning run needs besides the data (resolved from ``params.yaml`` by the stage).

    ``init``: None = random initialisation (BN trains everywhere); a checkpoint path = a pretrained trunk +
    identity branch (spec §4.5 path A: the expression branch is copied from the identity branch, and
    ``frozen_bn``/``dropout_off`` apply). The checkpoint is one of ours (``model.pt``) or a facenet-pytorch
    ``InceptionResnetV1`` state dict (the public VGGFace2 / CASIA-WebFace files; ``depth: full``; see
    :mod:`pipeline.models.facenet_import`). ``compile``: the training step's forward pass runs through
    ``torch.compile(model)`` (compiled at the first step; evaluation stays eager).
    """

    model: ModelConfig
    tasks: list[TaskSpec]
    weighting: str
    weighting_options: dict[str, Any]
    schedule: LrSchedule
    epochs: int
    batch_size: int = 90
    epoch_size: int = 100
    init: str | None = None
    optimizer: str = "rmsprop_tf1"
    weights_optimizer: str = "rmsprop_tf1"
    momentum: float = 0.9
    rms_decay: float = 0.9
    rms_eps: float = 1.0
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    center_loss_alpha: float = 0.5
    crop: int = 160
    random_crop: bool = True
    flip: bool = False
    frozen_bn: tuple[str, ...] = ("trunk", "identity")
    dropout_off: tuple[str, ...] = ("identity",)
    copy_branch: tuple[str, str] | None = ("identity", "expression")
    selection: Literal["test_fold", "val_subjects", "last"] = "test_fold"
    eval_mode: str = "clean"
    far_targets: tuple[float, ...] = (1e-3, 1e-2)
    eval_folds: int = 10
    seed: int = 666
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: int = 100
    device: str = "cpu"
    compile: bool = False


@dataclass
class TrainingParts:
    """What :func:`build_training` returns."""

    model: MultiTaskInceptionResNetV1
    strategy: Weighting
    optimizer: torch.optim.Optimizer
    own_optimizer: torch.optim.Optimizer | None
    centers: CenterLoss | None
    step: TrainStep


def build_model(spec: FinetuneSpec, device: torch.device) -> MultiTaskInceptionResNetV1:
    model = MultiTaskInceptionResNetV1(spec.model)
    if spec.init:
        load_pretrained(model, spec.init, spec.model)
        if spec.copy_branch:
            model.copy_branch(*spec.copy_branch)
    model = model.to(device)
    if spec.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def build_training(spec: FinetuneSpec, device: torch.device) -> TrainingParts:
    """Model, strategy, optimisers (at the schedule's epoch-1 rate), centers and the step function on ``device``.

    Seed the global RNG first: the model's and the weighting unit's initial weights come from it.
    """
    model = build_model(spec, device)
    names = [t.name for t in spec.tasks]
    feature_dim = int(np.prod(model.feature_shape()))
    strategy = _weighting.build_weighting(spec.weighting, spec.weighting_options, names, feature_dim).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(strategy.main_parameters())
    opt_kw = {"momentum": spec.momentum, "decay": spec.rms_decay, "eps": spec.rms_eps,
              "weight_decay": spec.weight_decay}
    lr0 = spec.schedule.at(1)
    optimizer = build_optimizer(spec.optimizer, params, lr0, **opt_kw)
    own = list(strategy.own_parameters())
    own_optimizer = build_optimizer(spec.weights_optimizer, own, strategy.own_lr.at(lr0), **opt_kw) if own else None
    centers = None
    if any(t.center_loss_factor for t in spec.tasks):
        n_ids = spec.model.heads[0].n_classes
        centers = CenterLoss(n_ids, model.feature_shape()[0], alpha=spec.center_loss_alpha).to(device)
    forward = torch.compile(model) if spec.compile else None
    step = TrainStep(model, strategy, spec.tasks, optimizer, own_optimizer, centers, clip_norm=spec.clip_norm,
                     amp=spec.amp, forward=forward)
    return TrainingParts(model, strategy, optimizer, own_optimizer, centers, step)
