"""Single-task identity pretraining of the trunk + identity branch (docs/method.md §4.5): the step, the loop, resume.

The paper fine-tunes from a face-recognition model pretrained on MS-Celeb-1M that is no longer available, so the
pipeline pretrains its own. Per step (global batch ``G`` split over ``world`` ranks):

1. this rank's ``G / world`` faces come from the shards (:mod:`pipeline.training.shard_data`; decoded in the loader
   workers, or with ``decode="device"`` on this process's device, :mod:`pipeline.training.shard_decode`), are
   cropped (random ``crop`` of the stored 182 px faces), optionally flipped, resized to ``input_size`` and
   standardised;
2. loss ``= mean_i CE_i + λc · mean_i ½‖e_i − c_{y_i}‖²`` (docs/method.md §2; the centers before this step's update;
   ``e`` the L2-normalised embeddings), or with ``center_loss.form: facenet`` facenet's term
   ``λc · mean_{i,d} (f_id − c_{y_i,d})²`` on the raw 1792-d prelogits ``f`` (:mod:`pipeline.losses.center`);
3. ``loss.backward()`` through :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over the
   ranks, so the update equals one process with the global batch), global-norm clipping (``clip_norm``, 0 = off),
   a finiteness check of loss, accuracy and gradient norm averaged over the ranks (every rank stops together);
4. the optimiser steps; the centers move (toward the batch means, or facenet's per-sample updates) with per-class
   sums and counts **all-reduced** over the ranks (:meth:`pipeline.losses.center.CenterLoss.apply_update`), so they
   stay identical everywhere.

Randomness is a function of ``(seed, step, rank)``: before each step the global RNG (dropout) and the
augmentation generator are reseeded from it, and the data order is a function of ``(seed, step)``
(:class:`~pipeline.training.shard_data.ShardBatchSampler`). A checkpoint therefore needs no RNG or loader state:
``work/state.pt`` (model, optimiser, centers, step, logged rows, evaluations; written atomically every
``checkpoint_every`` steps by rank 0) is enough for a killed run to continue bit-identically on CPU.

Every ``eval_every`` steps rank 0 evaluates LFW-protocol verification on a pairs set (``verify``; the others wait).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.losses.center import CenterLoss
from pipeline.models.network import HeadSpec, ModelConfig, MultiTaskInceptionResNetV1
from pipeline.settings import PretrainRuntime, PretrainSettings
from pipeline.training.data import preprocess
from pipeline.training.distributed import DistContext
from pipeline.training.optim import build_optimizer
from pipeline.training.schedule import LrSchedule, schedule_from
from pipeline.training.shard_data import ShardBatchSampler, ShardFaces, check_decode, make_loader, next_batch
from pipeline.training.shard_decode import batch_to_device
from pipeline.training.state import TrainingState
from pipeline.training.step import NonFiniteError, clip_global_norm

if TYPE_CHECKING:  # evaluation needs scikit-learn and SciPy: imported when a run verifies, not by bench/pretrain.py
    from pipeline.training.evaluate import EvalData

__all__ = ["ROW_COLUMNS", "PretrainResult", "PretrainSpec", "PretrainStep", "pretrain_spec", "run_pretrain",
           "step_seed"]

STATE_FORMAT = "dmtl-pretrain-state/1"
#: columns of ``steps.csv`` (means over the ``log_every`` steps ending at ``step``)
ROW_COLUMNS = ["step", "epoch", "lr", "loss", "cross_entropy", "center_loss", "train_accuracy", "grad_norm"]


@dataclass(frozen=True)
class PretrainSpec:
    """Everything one pretraining run needs besides the data.

    Attributes:
        settings: ``pretrain.train`` as it is in params (:class:`~pipeline.settings.PretrainSettings`):
            ``batch_size`` is the **global** batch (split evenly over the processes); ``schedule`` is in 0-based
            steps; ``checkpoint_every``/``eval_every``/``log_every`` in steps (the last step always checkpoints and
            evaluates); ``freeze_bn``: BN uses its moving statistics while training (for the multi-process
            equivalence test); ``shuffle_window``: data order (see :class:`~pipeline.training.shard_data.
            ShardBatchSampler`).
        model: the network (one head: ``identity`` with one class per training identity).
        checkpoint: the checkpoint ``settings.init`` resolves to (None = random, docs/method.md §1.1 initialisation):
            ours or facenet-pytorch, to continue from.
        runtime: ``pretrain.runtime``: the device (resolved), loader ``workers``, ``decode`` (``worker``: OpenCV in
            the loader's worker processes; ``device``: the workers only read the bytes and torchvision decodes each
            batch on the training device, nvJPEG on CUDA; the same pixels on the CPU), ``compile`` (``torch.compile``
            the training forward), ``eval_batch_size``.
    """

    settings: PretrainSettings
    model: ModelConfig
    checkpoint: str | None
    runtime: PretrainRuntime

    def __post_init__(self) -> None:
        check_decode(self.runtime.decode)

    @functools.cached_property
    def schedule(self) -> LrSchedule:
        """The learning rate per 0-based step (read once: a schedule file is parsed at the first access)."""
        return schedule_from(self.settings.schedule)


def pretrain_spec(settings: PretrainSettings, *, n_classes: int, align_convention: str, checkpoint: str | None,
                  runtime: PretrainRuntime) -> PretrainSpec:
    """The spec of one pretraining run from its settings and what the stage resolved (the identities of the
    training data, the checkpoint ``init`` names, the device)."""
    model = ModelConfig(heads=(HeadSpec("identity", n_classes),), network=settings.network,
                        align_convention=align_convention, crop=settings.crop)
    return PretrainSpec(settings=settings, model=model, checkpoint=checkpoint, runtime=runtime)


@dataclass
class PretrainResult:
    """The run's outcome (plain data for the stage to write)."""

    model: MultiTaskInceptionResNetV1
    centers: CenterLoss | None
    rows: list[dict[str, float]]  #: one per ``log_every`` steps (and at each checkpoint), :data:`ROW_COLUMNS`
    history: list[dict[str, Any]]  #: per evaluation: ``{"step", "verification_accuracy", "verification": {...}}``
    metrics: dict[str, Any]
    resumed_from: int  #: step the run resumed after (0 = fresh)
    seconds: float  #: training time of this process's run (after resume)
    images_per_second: float  #: global images per second over this run
    data_wait_fraction: float  #: share of the training time rank 0 waited for the next batch


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global RNG and the augmentation generator at ``step`` on ``rank``."""
    return ((seed * 1_000_003 + step) * 1009 + rank) % (2**63 - 1)


class PretrainStep:
    """One single-task identity step (see the module docstring); ``forward`` may be a DDP or compiled wrapper of
    ``model``.

    Args:
        dist: the process group (world of one without torchrun).
    """

    def __init__(self, model: MultiTaskInceptionResNetV1, forward: nn.Module, optimizer: torch.optim.Optimizer,
                 centers: CenterLoss | None, dist: DistContext, *, center_loss_factor: float, clip_norm: float,
                 amp: bool) -> None:
        self.model, self.forward, self.optimizer, self.centers, self.dist = model, forward, optimizer, centers, dist
        self.center_loss_factor = center_loss_factor
        self.clip_norm = clip_norm
        self.amp = amp
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.head = model.task_names[0]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Train on ``x [B, 3, S, S]`` (standardised) with identities ``y [B]``; returns the rank-mean
        ``loss, cross_entropy, center_loss, train_accuracy, grad_norm``.

        Raises:
            NonFiniteError: on every rank, before any parameter changes.
        """
        amp = self.amp and x.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            out = self.forward(x)
        logits = out.logits(self.head).float()
        ce = nn.functional.cross_entropy(logits, y)
        if self.centers is not None and self.center_loss_factor:  # the form's features: embeddings or prelogits
            feats = out.embeddings if self.centers.normalized_input else out.branches[self.head].prelogits.float()
            center = self.centers(feats, y).mean()
        else:
            center = torch.zeros((), device=x.device)
        loss = ce + self.center_loss_factor * center
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_global_norm(self.params, self.clip_norm)
        acc = (logits.argmax(1) == y).float().mean()
        # in ROW_COLUMNS order: loss, cross_entropy, center_loss, train_accuracy, grad_norm
        scalars = self.dist.mean(torch.stack([loss.detach(), ce.detach(), center.detach().float(), acc,
                                              norm.detach().float()])).cpu()
        if not bool(torch.isfinite(scalars).all()):
            v = scalars.tolist()
            raise NonFiniteError(f"non-finite value in a pretraining step: loss={v[0]:.4g}, cross_entropy={v[1]:.4g},"
                                 f" center_loss={v[2]:.4g}, grad_norm={v[4]:.4g}")
        self.optimizer.step()
        if self.centers is not None and self.center_loss_factor:
            sums, counts = self.centers.batch_statistics(feats.detach(), y)
            self.dist.all_reduce_sum_(sums, counts)
            self.centers.apply_update(sums, counts)
        return dict(zip(ROW_COLUMNS[3:], scalars.tolist(), strict=True))


def build_pretrain_model(spec: PretrainSpec) -> MultiTaskInceptionResNetV1:
    """The network at its initial weights (the global RNG must be seeded first); ``spec.checkpoint`` loads the trunk
    and the identity branch (bottleneck and classifier stay fresh: another set of identities)."""
    model = MultiTaskInceptionResNetV1(spec.model)
    if spec.checkpoint:
        from pipeline.models.pretrained import load_pretrained

        load_pretrained(model, spec.checkpoint, spec.model)
    return model


def run_pretrain(spec: PretrainSpec, train: ShardFaces, work: Path, dist: DistContext, *,
                 verify: EvalData | None = None,
                 on_log: Callable[[list[dict[str, float]]], None] | None = None,
                 on_eval: Callable[[dict[str, Any]], None] | None = None,
                 on_resume: Callable[[list[dict[str, float]], list[dict[str, Any]]], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> PretrainResult:
    """Train ``spec.steps`` steps from ``work/state.pt`` if present (see the module docstring).

    Args:
        train: the training faces (this process reads only its slice of each batch).
        work: the run's private folder (rank 0 writes ``state.pt`` there; every rank reads it on resume).
        dist: the process group.
        verify: the pairs set evaluated every ``eval_every`` steps (rank 0), or None.
        on_log: rank 0, with the new rows after every ``log_every`` steps.
        on_eval: rank 0, with each evaluation entry.
        on_resume: rank 0, once when resuming, with the checkpoint's rows and evaluations.
        progress: called with the global number of images after every step (rank 0).
    """
    s = spec.settings
    device = torch.device(dist.device)
    state = TrainingState(work, STATE_FORMAT, "pretraining")
    if dist.is_main:
        work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    model = build_pretrain_model(spec).to(device)
    channels_last = s.precision.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = spec.schedule
    optimizer = build_optimizer(s.optimizer, params, schedule.at(0))
    centers = None
    if s.center_loss.factor:
        centers = CenterLoss(spec.model.heads[0].n_classes, model.feature_shape()[0], alpha=s.center_loss.alpha,
                             form=s.center_loss.form).to(device)
    rows: list[dict[str, float]] = []
    history: list[dict[str, Any]] = []
    step = 0
    objects = {"model": model, "optimizer": optimizer, "centers": centers}
    st = state.load()
    if st is not None:
        state.restore(st, objects)
        rows, history, step = st["rows"], st["history"], int(st["step"])
        if on_resume is not None and dist.is_main:
            on_resume(rows, history)
    resumed_from = step

    forward: nn.Module = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=True)
    if spec.runtime.compile:
        forward = torch.compile(forward)
    step_fn = PretrainStep(model, forward, optimizer, centers, dist, center_loss_factor=s.center_loss.factor,
                           clip_norm=s.optimizer.clip_norm, amp=s.precision.amp)
    sampler = ShardBatchSampler(train.shard, s.batch_size, seed=s.seed, rank=dist.rank, world=dist.world,
                                window=s.shuffle_window, start_step=step)
    per_epoch = sampler.batches_per_epoch
    gen = torch.Generator(device=device)
    frozen = ("trunk", model.task_names[0]) if s.freeze_bn else ()
    verify_images = verify.images.to(device) if verify is not None and dist.is_main else None

    pending: list[dict[str, float]] = []
    t0 = time.perf_counter()
    waited = 0.0
    done_images = 0
    loader = make_loader(train, sampler, workers=spec.runtime.workers, pin_memory=device.type == "cuda",
                         decode=spec.runtime.decode) if step < s.steps else None
    batches = iter(loader) if loader is not None else iter(())
    try:
        while step < s.steps:
            lr = schedule.at(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            model.set_phase(train=True, frozen_bn=frozen)
            tw = time.perf_counter()
            batch = next_batch(batches)
            waited += time.perf_counter() - tw
            raw, y = batch_to_device(batch, train, device)
            seed = step_seed(s.seed, step, dist.rank)
            torch.manual_seed(seed)
            gen.manual_seed(seed)
            x = preprocess(raw, crop=s.crop.size, input_size=s.network.input_size, train=True,
                           random_crop=s.crop.random, flip=s.crop.flip, generator=gen, channels_last=channels_last)
            values = step_fn(x, y)
            step += 1
            done_images += s.batch_size
            pending.append(values)
            if progress is not None and dist.is_main:
                progress(s.batch_size)
            last = step == s.steps
            if step % s.log_every == 0 or step % s.checkpoint_every == 0 or last:
                row = {"step": step, "epoch": step / per_epoch, "lr": lr}
                row.update({k: float(np.mean([p[k] for p in pending])) for k in ROW_COLUMNS[3:]})
                pending = []
                rows.append(row)
                if on_log is not None and dist.is_main:
                    on_log([row])
            if verify is not None and (step % s.eval_every == 0 or last):
                if dist.is_main:
                    entry = _evaluate(spec, model, verify, verify_images, step)
                    history.append(entry)
                    if on_eval is not None:
                        on_eval(entry)
                dist.barrier()
            if step % s.checkpoint_every == 0 or last:
                if dist.is_main:
                    state.save(objects, step=step, rows=rows, history=history)
                dist.barrier()
    finally:
        del batches
        loader = None
    seconds = time.perf_counter() - t0
    model.eval()
    metrics = _metrics(spec, rows, history, dist.world)
    return PretrainResult(model=model, centers=centers, rows=rows, history=history, metrics=metrics,
                          resumed_from=resumed_from, seconds=seconds,
                          images_per_second=done_images / seconds if seconds > 0 else 0.0,
                          data_wait_fraction=waited / seconds if seconds > 0 else 0.0)


def _evaluate(spec: PretrainSpec, model: MultiTaskInceptionResNetV1, verify: EvalData, images: torch.Tensor,
              step: int) -> dict[str, Any]:
    """Verification of ``verify``'s pairs; ``images`` = ``verify.images`` already on the model's device."""
    from pipeline.training.evaluate import evaluate, predict

    s = spec.settings
    head = spec.model.heads[0].name
    pred = predict(model, images, crop=s.crop.size, input_size=s.network.input_size,
                   batch_size=spec.runtime.eval_batch_size, amp=s.precision.amp,
                   channels_last=s.precision.channels_last and images.device.type == "cuda", embed=[head])
    if not np.isfinite(pred.embeddings[head]).all():
        raise NonFiniteError(f"non-finite embeddings when evaluating step {step}: the last steps diverged")
    m, _ = evaluate(pred, verify, [(head, "verification")], protocol=s.protocol, seed=s.seed)
    return {"step": step, "verification_accuracy": m.get("verification_accuracy"),
            "verification": m.get("verification")}


def _metrics(spec: PretrainSpec, rows: list[dict[str, float]], history: list[dict[str, Any]],
             world: int) -> dict[str, Any]:
    s = spec.settings
    last_row = rows[-1] if rows else {}
    out: dict[str, Any] = {"steps": s.steps, "batch_size": s.batch_size, "processes": world,
                           "images_seen": s.steps * s.batch_size,
                           "last": {k: last_row.get(k) for k in ROW_COLUMNS}}
    if history:
        best = max(history, key=lambda e: e["verification_accuracy"] or 0.0)
        out["verification"] = {"last": history[-1], "best_step": best["step"],
                               "best_accuracy": best["verification_accuracy"]}
    return out
