"""Multi-task fine-tuning of one (dataset, fold, method): the loop, per-epoch evaluation, model selection, resume.

The loop (docs/method.md §4): for each 1-based epoch ``e``: the learning rate is ``schedule.at(e)``; ``epoch_size``
batches of ``batch_size`` come from the permutation stream; each batch is one
:class:`~pipeline.training.step.TrainStep`; then the model is evaluated on the test fold (and on held-out training
subjects with ``selection="val_subjects"``), the strategy sees each task's mean loss over the epoch's batches where the
task was present, and the whole training state is written to ``work/state.pt`` (atomic). A run that finds ``state.pt``
resumes after its epoch with the same model, optimiser, centers, strategy, sampler and RNG states, so an interrupted run
ends bit-identical to an uninterrupted one on CPU.

Model selection (docs/method.md §6.4, §9.15), per criterion (:func:`pipeline.training.evaluate.criteria`:
``verification`` = pair accuracy, each classification task's accuracy, ``authentication`` = their product):

- ``test_fold``: the best epoch on the test fold itself (the original's numbers; optimistic, labelled as such);
- ``val_subjects``: the best epoch on held-out training subjects; the test-fold numbers of that epoch are reported;
- ``last``: the last epoch for every criterion.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.network import MultiTaskInceptionResNetV1
from pipeline.training.build import FinetuneSpec, build_training
from pipeline.training.data import LabelledImages, preprocess
from pipeline.training.evaluate import EvalData, Predictions, criteria, evaluate, evaluations_of, predict
from pipeline.training.plan import BatchPlan, StreamPlan
from pipeline.training.state import TrainingState, extra_state, generator
from pipeline.training.step import NonFiniteError, StepResult

__all__ = ["FinetuneResult", "FinetuneSpec", "run_finetune", "step_columns"]

STATE_FORMAT = "dmtl-finetune-state/2"


@dataclass
class FinetuneResult:
    """The run's outcome (plain data for the stage to write)."""

    model: MultiTaskInceptionResNetV1
    rows: list[dict[str, float]]
    history: list[dict[str, Any]]  #: per epoch: {"epoch", "test": M, "val": M | None}
    metrics: dict[str, Any]  #: {"last": M, "best": {...}}
    scores: dict[str, np.ndarray]  #: last_* and best_<criterion>_* score arrays
    resumed_from: int  #: epoch the run resumed after (0 = fresh)
    seconds: float
    images_per_second: float


def step_columns(task_names: list[str], extra: list[str] = ()) -> list[str]:
    """Column order of ``steps.csv``."""
    cols = ["step", "epoch", "lr", "lr_weights"]
    cols += [f"loss_{t}" for t in task_names] + [f"weight_{t}" for t in task_names]
    cols += ["total_loss", "weight_loss", "grad_norm", "grad_norm_weights"]
    cols += [f"present_{t}" for t in task_names]
    return [*cols, *extra]


def _row(step: int, epoch: int, lr: float, lr_w: float | None, names: list[str], r: StepResult) -> dict[str, float]:
    row: dict[str, float] = {"step": step, "epoch": epoch, "lr": lr, "lr_weights": lr_w if lr_w is not None else ""}
    row.update({f"loss_{t}": v for t, v in zip(names, r.losses, strict=True)})
    row.update({f"weight_{t}": v for t, v in zip(names, r.weights, strict=True)})
    row.update({"total_loss": r.total, "weight_loss": r.aux if r.aux is not None else "",
                "grad_norm": r.grad_norm, "grad_norm_weights": r.grad_norm_own if r.grad_norm_own is not None else ""})
    row.update({f"present_{t}": int(p) for t, p in zip(names, r.present, strict=True)})
    row.update(r.extra)
    return row


def _epoch_means(rows: list[dict[str, float]], names: list[str]) -> list[float]:
    """Each task's mean loss over the rows (batches) where it was present; NaN where it never was."""
    means = []
    for t in names:
        values = [r[f"loss_{t}"] for r in rows if r[f"present_{t}"]]
        means.append(float(np.mean(values)) if values else float("nan"))
    return means


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Selector:
    """Tracks the best epoch per criterion (``{criterion: metric key}``) on the selection data."""

    def __init__(self, selection: str, criteria: dict[str, str]) -> None:
        self.selection = selection
        self.criteria = criteria
        self.best: dict[str, dict[str, Any]] = {}

    def update(self, epoch: int, selected_on: dict[str, Any], test: dict[str, Any]) -> list[str]:
        """Record epoch ``epoch``; returns the criteria it became best for."""
        improved = []
        for crit, key in self.criteria.items():
            value = selected_on.get(key)
            if value is None:
                continue
            cur = self.best.get(crit)
            if self.selection == "last" or cur is None or value > cur["value"]:
                self.best[crit] = {"epoch": epoch, "value": value, "metrics": test}
                improved.append(crit)
        return improved


def run_finetune(spec: FinetuneSpec, train: LabelledImages, test: EvalData, work: Path, *,
                 val: EvalData | None = None,
                 on_epoch: Callable[[int, list[dict[str, float]], dict[str, Any]], None] | None = None,
                 on_resume: Callable[[list[dict[str, float]], list[dict[str, Any]]], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 plan: Callable[[torch.nn.Module], BatchPlan] | None = None) -> FinetuneResult:
    """Train, evaluate every epoch, select, checkpoint; resume from ``work/state.pt`` when present.

    Args:
        spec: settings.
        train: training images (``uint8``) and per-task labels; moved to ``spec.runtime.device``.
        test: the test fold's images, pairs and per-task labels.
        work: the run's private folder (checkpoints); created if missing.
        val: held-out training subjects (required for ``selection="val_subjects"``).
        on_epoch: called after each epoch's checkpoint with ``(epoch, that epoch's step rows, history entry)``.
        on_resume: called once when resuming, with the checkpoint's step rows and history (so a caller can log
            epochs that were checkpointed but not yet reported when the run was killed).
        progress: called with the number of images trained after every step.
        plan: makes the run's :class:`~pipeline.training.plan.BatchPlan` from the model at its initial weights
            (default: :class:`~pipeline.training.plan.StreamPlan`, ``epoch_size`` batches per epoch from one
            permutation stream). A plan's ``begin_epoch`` scalars go into the epoch's history entry (``plan``).
    """
    s = spec.settings
    if s.selection == "val_subjects" and val is None:
        raise ValueError("selection val_subjects needs held-out validation data")
    device = torch.device(spec.runtime.device)
    work.mkdir(parents=True, exist_ok=True)
    state = TrainingState(work, STATE_FORMAT, "fine-tuning")
    _seed_everything(s.seed)
    parts = build_training(spec, device)
    model, strategy, optimizer, own_optimizer, centers, step_fn = (
        parts.model, parts.strategy, parts.optimizer, parts.own_optimizer, parts.centers, parts.step)
    names = spec.task_names
    schedule = spec.schedule
    channels_last = s.precision.channels_last and device.type == "cuda"
    train = train.to(device)
    test_images = test.images.to(device)
    val_images = val.images.to(device) if val is not None else None
    batches = (plan(model) if plan is not None
               else StreamPlan(len(train), s.batch_size, s.epoch_size, s.seed + 1))
    crop_gen = torch.Generator(device=device).manual_seed(s.seed + 2)
    selector = _Selector(s.selection, criteria(spec.tasks))
    rows: list[dict[str, float]] = []
    history: list[dict[str, Any]] = []
    scores: dict[str, np.ndarray] = {}
    start_epoch = 0

    objects = {"model": model, "strategy": strategy, "strategy_extra": extra_state(strategy), "optimizer": optimizer,
               "own_optimizer": own_optimizer, "centers": centers, "stream": batches, "crop_gen": generator(crop_gen)}
    st = state.load()
    if st is not None:
        state.restore(st, objects, rng=device)
        selector.best = st["best"]
        rows, history, scores = st["rows"], st["history"], st["scores"]
        start_epoch = int(st["epoch"])
        if on_resume is not None:
            on_resume(rows, history)

    if s.epochs == 0:  # no training: the initial (pretrained) model, evaluated once as epoch 0
        entry, epoch_scores = _evaluate_epoch(spec, model, test, test_images, val, val_images, 0, first=1)
        history = [entry]
        selected_on = entry["val"] if s.selection == "val_subjects" else entry["test"]
        selector.update(0, selected_on, entry["test"])
        scores = {f"{p}_{k}": v for k, v in epoch_scores.items()
                  for p in ("last", *(f"best_{c}" for c in selector.best))}
        if on_epoch is not None:
            on_epoch(0, [], entry)
    pretrained = (names[0],)
    frozen = ("trunk", *pretrained) if spec.checkpoint and s.freeze_pretrained_bn else ()
    dropout_off = pretrained if spec.checkpoint and not s.pretrained_dropout else ()
    step = len(rows)  # the checkpoint holds a row per step trained (a plan may vary the steps per epoch)
    t0 = time.perf_counter()
    trained = 0
    for epoch in range(start_epoch + 1, s.epochs + 1):
        lr = schedule.at(epoch)
        lr_w = strategy.own_lr.at(lr) if own_optimizer is not None else None
        for g in optimizer.param_groups:
            g["lr"] = lr
        if own_optimizer is not None:
            for g in own_optimizer.param_groups:
                g["lr"] = lr_w
        plan_scalars = batches.begin_epoch(epoch, model)
        model.set_phase(train=True, frozen_bn=frozen, dropout_off=dropout_off)
        epoch_rows = []
        for _ in range(batches.steps(epoch)):
            idx = batches.next(epoch)
            raw, labels = train.take(idx)
            targets = {k: v.to(device) for k, v in batches.targets(idx).items()}
            x = preprocess(raw, crop=s.crop.size, input_size=s.network.input_size, train=True,
                           random_crop=s.crop.random, flip=s.crop.flip, generator=crop_gen,
                           channels_last=channels_last)
            result = step_fn(x, labels, targets) if targets else step_fn(x, labels)
            step += 1
            trained += len(idx)
            epoch_rows.append(_row(step, epoch, lr, lr_w, names, result))
            if progress is not None:
                progress(len(idx))
        strategy.end_epoch(torch.tensor(_epoch_means(epoch_rows, names), dtype=torch.float32, device=device))
        entry, epoch_scores = _evaluate_epoch(spec, model, test, test_images, val, val_images, epoch)
        if plan_scalars:
            entry["plan"] = plan_scalars
        history.append(entry)
        rows.extend(epoch_rows)
        selected_on = entry["val"] if s.selection == "val_subjects" else entry["test"]
        for crit in selector.update(epoch, selected_on, entry["test"]):
            scores.update({f"best_{crit}_{k}": v for k, v in epoch_scores.items()})
        scores.update({f"last_{k}": v for k, v in epoch_scores.items()})
        state.save(objects, rng=device, epoch=epoch, best=selector.best, rows=rows, history=history, scores=scores)
        if on_epoch is not None:
            on_epoch(epoch, epoch_rows, entry)
    seconds = time.perf_counter() - t0
    model.eval()
    metrics = _metrics(spec, history, selector)
    return FinetuneResult(model=model, rows=rows, history=history, metrics=metrics, scores=scores,
                          resumed_from=start_epoch, seconds=seconds,
                          images_per_second=trained / seconds if seconds > 0 else 0.0)


def _evaluate_epoch(spec: FinetuneSpec, model: MultiTaskInceptionResNetV1, test: EvalData, test_images: torch.Tensor,
                    val: EvalData | None, val_images: torch.Tensor | None, epoch: int, first: int | None = None
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Test (and validation) metrics of the current model; ``first=1`` evaluates the first (pretrained) task only
    (an untrained head's accuracy would be noise)."""
    s = spec.settings
    evaluations = evaluations_of(spec.tasks, first)
    embed = sorted({t for t, kind in evaluations if kind in ("verification", "identification")},
                   key=spec.task_names.index)
    kw = {"crop": s.crop.size, "input_size": s.network.input_size, "batch_size": spec.runtime.eval_batch_size,
          "amp": s.precision.amp, "channels_last": s.precision.channels_last and test_images.device.type == "cuda",
          "embed": embed}
    keep = spec.task_names[:first]

    def run(images: torch.Tensor) -> Predictions:
        pred = _finite(predict(model, images, **kw), epoch)
        return Predictions(pred.embeddings, {k: v for k, v in pred.logits.items() if k in keep})

    m_test, scores = evaluate(run(test_images), test, evaluations, protocol=s.protocol, seed=s.seed)
    m_val = None
    if val is not None and val_images is not None:
        m_val, _ = evaluate(run(val_images), val, evaluations, protocol=s.protocol, seed=s.seed)
    return {"epoch": epoch, "test": m_test, "val": m_val}, scores


def _finite(pred: Predictions, epoch: int) -> Predictions:
    """``pred`` if every embedding and logit is finite, else :class:`NonFiniteError` (the epoch's last steps
    diverged: their losses were finite, the updated weights are not usable)."""
    arrays = [*pred.embeddings.values(), *pred.logits.values()]
    if not all(np.isfinite(a).all() for a in arrays):
        raise NonFiniteError(f"non-finite model outputs when evaluating epoch {epoch}: its last steps diverged")
    return pred


def _metrics(spec: FinetuneSpec, history: list[dict[str, Any]], selector: _Selector) -> dict[str, Any]:
    best = {"selected_on": spec.settings.selection}
    for crit in selector.criteria:
        if crit in selector.best:
            b = selector.best[crit]
            best[crit] = {"epoch": b["epoch"], **b["metrics"]}
    return {"epochs": spec.settings.epochs, "last": {"epoch": history[-1]["epoch"], **history[-1]["test"]},
            "best": best}
