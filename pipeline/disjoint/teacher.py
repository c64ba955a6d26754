"""The teacher's pass: logits and task features of some training images under the model as it is (docs/disjoint.md).

SA-MTL's teacher is the model at the start of an epoch, frozen. Its outputs over the images that need targets are
computed at once, when the epoch starts (:class:`pipeline.disjoint.plan.DisjointPlan`), so no copy of the network is
kept: the outputs are what the run keeps (and checkpoints) until the next refresh.

Per task: the head's logits ``[N, C]`` and the features the pseudo-label weights use ``[N, D]``: the head's hidden
layer before its ReLU (the original's 128-d ``*_fc`` Dense outputs, no activation) when the head has one, otherwise
the branch's L2-normalised prelogits (1792-d).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.network import MultiTaskInceptionResNetV1, l2_normalize
from pipeline.training.data import preprocess

__all__ = ["TeacherOutputs", "teacher_outputs"]


@dataclass
class TeacherOutputs:
    """Per task: ``logits[task] float32 [N, C]`` and ``features[task] float32 [N, D]`` (numpy, CPU)."""

    logits: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


@torch.no_grad()
def teacher_outputs(model: MultiTaskInceptionResNetV1, images: torch.Tensor, tasks: Sequence[str], *, crop: int,
                    input_size: int, batch_size: int, amp: bool = False) -> TeacherOutputs:
    """The teacher's logits and features of ``tasks`` for ``images uint8 [N, 3, S, S]`` (on any device: each batch is
    moved to the model's; centre crop, evaluation mode, bf16 autocast when ``amp`` on CUDA; the model's mode is
    restored afterwards, its parameters are not touched)."""
    was_training = model.training
    model.eval()
    logits: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    feats: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    device = next(model.parameters()).device
    use_amp = amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    try:
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size].to(device), crop=crop, input_size=input_size,
                           train=False)
            with autocast:
                out = model(x)
            for t in tasks:
                branch = model.branches[t]
                pre = out.branches[t].prelogits.float()  # bf16 under autocast; the hidden layer is float32
                f = branch.hidden(pre) if branch.hidden is not None else l2_normalize(pre)
                logits[t].append(out.logits(t).float().cpu().numpy())
                feats[t].append(f.float().cpu().numpy())
    finally:
        model.train(was_training)
    n_classes = {t: model.branches[t].logits.out_features for t in tasks}
    width = {t: (model.branches[t].hidden.out_features if model.branches[t].hidden is not None
                 else model.branches[t].logits.in_features) for t in tasks}
    return TeacherOutputs(
        logits={t: np.concatenate(v) if v else np.zeros((0, n_classes[t]), np.float32) for t, v in logits.items()},
        features={t: np.concatenate(v) if v else np.zeros((0, width[t]), np.float32) for t, v in feats.items()})
