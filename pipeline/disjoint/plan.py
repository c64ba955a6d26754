"""The batch plan of a disjoint-datasets run: per-source sampling, teacher refreshes and soft targets
(docs/disjoint.md#the-training-loop).

The training images are stored source after source (:class:`~pipeline.disjoint.sampling.SourceRanges`); source
``s`` labels task ``source_tasks[s]`` only (the other tasks' labels are ``-1``). :class:`DisjointPlan` implements
:class:`pipeline.training.plan.BatchPlan` for the fine-tuning loop:

- **steps and batches** by ``mode``: ``single`` (a joint sampler over the sources of one task), ``joint``
  (:class:`~pipeline.disjoint.sampling.JointSampler`), ``alternating`` (:class:`~pipeline.disjoint.sampling.
  AlternatingSampler`; with ``first_refresh: warmup`` the first ``warmup_epochs`` epochs are joint and masked, and the
  alternation starts after them);
- **refreshes** (transfer ``kind`` not ``none``): at the start of every alternating epoch, or every
  ``refresh_epochs`` joint epochs (from the first epoch after the warm-up), the model as it is (the teacher:
  :func:`~pipeline.disjoint.teacher.teacher_outputs`) predicts, for the images that need targets (alternating: the
  active source; joint: every source), each task their source does not label, and the targets of those rows are
  replaced:

  - an identity task (evaluated by verification) gets distilled logits (``identity_transfer: logits``) or nothing;
  - another task gets ``distill``: ``softmax(z / T)`` (:func:`~pipeline.disjoint.distill.distill_targets`), or
    ``pseudo``: ``ŷ = argmax z``, weights from ``transfer.weights`` (:mod:`~pipeline.disjoint.pseudo_weights`:
    confidence of ``softmax(z)``, density of the features per pseudo class, distribution against the teacher's
    features of the task's own labelled images), then ``selection`` (:func:`~pipeline.disjoint.selection.
    select_targets`).

  Targets of a task stay as the last refresh left them (alternating: the rows of the other sources keep the targets
  of their own last active epoch; the batches of an epoch come from its active source only, so they are not used).
- **targets** of a batch: per task with any target, the rows of its indices (zero rows: no target).

Every refresh calls ``on_refresh(epoch, records)`` with a table per pseudo-labelled task (``image_id``, ``pseudo``,
each factor, ``weight``, ``selected``) and returns scalars for the epoch's history: per task, the share of the
refreshed images with a target (``coverage_<task>``), the mean weight of the selected ones (``weight_<task>``) and
what ``on_refresh`` returns.

State (checkpointed by the loop): the sampler, the targets and the epoch of the last refresh, so a resumed run draws
the same batches with the same targets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.disjoint.distill import distill_targets
from pipeline.disjoint.pseudo_weights import combine, confidence, density, distribution
from pipeline.disjoint.sampling import AlternatingSampler, JointSampler, SourceRanges
from pipeline.disjoint.selection import select_targets
from pipeline.disjoint.teacher import TeacherOutputs
from pipeline.settings import JointSamplingSettings, TransferSettings

__all__ = ["DisjointPlan", "TeacherFn"]

#: ``(model, image indices int64 [n], tasks) -> TeacherOutputs`` over the training images ``indices``
TeacherFn = Callable[[nn.Module, torch.Tensor, Sequence[str]], TeacherOutputs]


class DisjointPlan:
    """Batches, refreshes and soft targets of one disjoint-datasets run (module docstring).

    Args:
        sizes: images per source, in storage order.
        source_tasks: the task each source labels.
        image_ids: the training images' ids, in storage order (for the refresh records).
        labels: the training labels per task, ``int64 [N]`` (``-1`` = not labelled), CPU.
        n_classes: classes per task.
        identity_tasks: tasks evaluated by verification (no pseudo labels: other subjects are no identity class).
        mode: ``single`` | ``joint`` | ``alternating``; ``task``: the task of ``single``.
        transfer: the method's :class:`~pipeline.settings.TransferSettings`.
        joint: :class:`~pipeline.settings.JointSamplingSettings`; ``epoch_size`` its ``fixed`` epoch.
        batch_size: images per batch; ``refresh_epochs``: joint refresh period; ``seed``: samplers and mixtures.
        teacher: computes the teacher's outputs (:data:`TeacherFn`).
        on_refresh: receives ``(epoch, {task: records})`` after each refresh; the scalars it returns join the
            refresh's.
    """

    def __init__(self, *, sizes: Sequence[int], source_tasks: Sequence[str], image_ids: Sequence[str],
                 labels: dict[str, torch.Tensor], n_classes: dict[str, int], identity_tasks: Sequence[str],
                 mode: str, task: str | None, transfer: TransferSettings, joint: JointSamplingSettings,
                 epoch_size: int, batch_size: int, refresh_epochs: int, seed: int, teacher: TeacherFn,
                 on_refresh: Callable[[int, dict[str, pd.DataFrame]], dict[str, float] | None] | None = None
                 ) -> None:
        if len(sizes) != len(source_tasks):
            raise ValueError(f"{len(sizes)} source sizes for {len(source_tasks)} source tasks")
        self.ranges = SourceRanges.from_sizes(sizes)
        if self.ranges.total != len(image_ids):
            raise ValueError(f"sources hold {self.ranges.total} images, image_ids {len(image_ids)}")
        self.source_tasks = list(source_tasks)
        self.image_ids = list(image_ids)
        self.labels = {k: v.cpu() for k, v in labels.items()}
        self.n_classes = dict(n_classes)
        self.identity_tasks = set(identity_tasks)
        self.mode = mode
        self.transfer = transfer
        self.batch_size = batch_size
        self.refresh_epochs = refresh_epochs
        self.seed = seed
        self.teacher = teacher
        self.on_refresh = on_refresh
        self.warmup = transfer.warmup_epochs if transfer.first_refresh == "warmup" and mode != "single" else 0
        fixed = epoch_size if joint.epoch == "fixed" else None
        jkw = {"epoch": joint.epoch, "ratios": joint.ratios, "temperature": joint.temperature, "fixed_steps": fixed}
        if mode == "single":
            chosen = [s for s, t in enumerate(self.source_tasks) if t == task]
            if not chosen:
                raise ValueError(f"mode single: no source labels task {task!r}")
            self.members = torch.cat([torch.arange(*self.ranges.bounds(s)) for s in chosen])
            self.joint = JointSampler([sizes[s] for s in chosen], batch_size, seed, **jkw)
        elif mode in ("joint", "alternating"):
            self.members = None
            self.joint = JointSampler(sizes, batch_size, seed, **jkw) if mode == "joint" or self.warmup else None
        else:
            raise ValueError(f"mode: {mode!r} is not single, joint or alternating")
        self.alternating = AlternatingSampler(sizes, batch_size, seed + 1) if mode == "alternating" else None
        if mode != "single" and transfer.kind == "pseudo" and "distribution" in transfer.weights:
            self._check_cluster_k()
        self.targets_of: dict[str, torch.Tensor] = {}
        self.last_refresh = 0

    def _check_cluster_k(self) -> None:
        """The distribution factor fits ``cluster_k`` components on a task's labelled images and on each refresh's
        images: refuse a run that would fail at its first refresh."""
        k = self.transfer.cluster_k
        for task, labels in self.labels.items():
            if self._kind(task) != "pseudo":
                continue
            labelled = int((labels >= 0).sum())
            if labelled < k:
                raise ValueError(f"transfer.cluster_k ({k}) exceeds the {labelled} images labelled for {task!r}")
            others = [n for n, t in zip(self.ranges.sizes, self.source_tasks, strict=True) if t != task]
            if others and min(others) < k:
                raise ValueError(f"transfer.cluster_k ({k}) exceeds the {min(others)} images of a source without "
                                 f"{task!r} labels (its pseudo-labelled images)")

    # -- schedule ----------------------------------------------------------------------------------------------
    def _alternation_epoch(self, epoch: int) -> int | None:
        """The alternation's own 1-based epoch, or None during the warm-up (or without alternation)."""
        if self.alternating is None or epoch <= self.warmup:
            return None
        return epoch - self.warmup

    def active_source(self, epoch: int) -> int | None:
        """The source an alternating epoch trains on (None: every source)."""
        e = self._alternation_epoch(epoch)
        return None if e is None else self.alternating.active_source(e)

    def steps(self, epoch: int) -> int:
        e = self._alternation_epoch(epoch)
        return self.alternating.steps(e) if e is not None else self.joint.steps_per_epoch

    def epoch_images(self, epoch: int) -> int:
        """Images trained in epoch ``epoch`` (an alternating epoch's last batch is short)."""
        e = self._alternation_epoch(epoch)
        if e is not None:
            return self.ranges.sizes[self.alternating.active_source(e)]
        return self.joint.steps_per_epoch * self.batch_size

    def next(self, epoch: int) -> torch.Tensor:
        e = self._alternation_epoch(epoch)
        if e is not None:
            return self.alternating.next(e)
        idx = self.joint.next()
        return self.members[idx] if self.members is not None else idx

    def _refreshes(self, epoch: int) -> bool:
        if self.transfer.kind == "none" and self.transfer.identity_transfer == "none":
            return False
        if self.mode == "single" or epoch <= self.warmup:
            return False
        if self.alternating is not None:
            return True
        return (epoch - self.warmup - 1) % self.refresh_epochs == 0

    # -- refresh -----------------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if not self._refreshes(epoch):
            return {}
        active = self.active_source(epoch)
        sources = [active] if active is not None else list(range(len(self.ranges)))
        scalars: dict[str, float] = {}
        records: dict[str, pd.DataFrame] = {}
        for task in self.labels:
            kind = self._kind(task)
            if kind == "none":
                continue
            rows = [torch.arange(*self.ranges.bounds(s)) for s in sources if self.source_tasks[s] != task]
            if not rows:
                continue
            idx = torch.cat(rows)
            out = self.teacher(model, idx, [task])
            z = torch.from_numpy(out.logits[task])
            if kind == "distill":
                target = distill_targets(z, self.transfer.temperature, self.transfer.softmax)
                weight = target.sum(dim=1)
                selected = torch.ones(len(idx), dtype=torch.bool)
            else:
                target, weight, selected, table = self._pseudo(task, idx, out, model, epoch)
                records[task] = table
            full = self.targets_of.get(task)
            if full is None:
                full = torch.zeros(self.ranges.total, self.n_classes[task], dtype=torch.float32)
            full[idx] = target.to(torch.float32)
            self.targets_of[task] = full
            has = (target != 0).any(dim=1)
            scalars[f"coverage_{task}"] = float(has.float().mean()) if len(idx) else 0.0
            scalars[f"weight_{task}"] = float(weight[selected].mean()) if bool(selected.any()) else 0.0
        self.last_refresh = epoch
        if self.on_refresh is not None:
            scalars.update(self.on_refresh(epoch, records) or {})
        return scalars

    def _kind(self, task: str) -> str:
        """``distill``, ``pseudo`` or ``none``: what ``task`` learns on the images of other sources."""
        if task in self.identity_tasks:
            return "distill" if self.transfer.identity_transfer == "logits" else "none"
        return self.transfer.kind

    def _pseudo(self, task: str, idx: torch.Tensor, out: TeacherOutputs, model: nn.Module, epoch: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, pd.DataFrame]:
        """Pseudo labels of ``task`` on the images ``idx``: targets ``[n, C]``, weights ``[n]``, selection ``[n]``
        and the refresh record."""
        tr = self.transfer
        z = out.logits[task]
        probs = torch.softmax(torch.from_numpy(z), dim=1).numpy()
        pseudo = probs.argmax(axis=1)
        feats = out.features[task]
        factors: dict[str, np.ndarray] = {}
        if "confidence" in tr.weights:
            factors["confidence"] = confidence(probs)
        if "density" in tr.weights:
            factors["density"] = density(feats, pseudo, tr.density_t)
        if "distribution" in tr.weights:
            own = torch.nonzero(self.labels[task] >= 0).flatten()
            lab = self.teacher(model, own, [task])
            factors["distribution"] = distribution(lab.features[task], self.labels[task][own].numpy(), feats, pseudo,
                                                   k=tr.cluster_k, seed=self.seed + epoch,
                                                   source_mass=tr.source_mass)
        w = combine(factors, list(tr.weights)) if tr.weights else np.ones(len(idx))
        weights = torch.from_numpy(np.asarray(w, dtype=np.float32))
        distilled = distill_targets(torch.from_numpy(z), tr.temperature, tr.softmax) if tr.selection != "hard" \
            else None
        sel = select_targets(torch.from_numpy(pseudo).long(), weights, distilled, rule=tr.selection,
                             quantile=tr.quantile, n_classes=self.n_classes[task])
        table = pd.DataFrame({"image_id": [self.image_ids[i] for i in idx.tolist()], "task": task,
                              "pseudo": pseudo.astype(np.int64),
                              **{f: factors[f].astype(np.float64) for f in factors},
                              "weight": weights.numpy().astype(np.float64), "selected": sel.selected.numpy()})
        return sel.targets, weights, sel.selected, table

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: v[index] for t, v in self.targets_of.items()}

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"joint": self.joint.state_dict() if self.joint is not None else None,
                "alternating": self.alternating.state_dict() if self.alternating is not None else None,
                "targets": {k: v.clone() for k, v in self.targets_of.items()}, "last_refresh": self.last_refresh}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.joint is not None:
            self.joint.load_state_dict(state["joint"])
        if self.alternating is not None:
            self.alternating.load_state_dict(state["alternating"])
        self.targets_of = {k: v.clone() for k, v in state["targets"].items()}
        self.last_refresh = int(state["last_refresh"])
