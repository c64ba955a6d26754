"""Throughput of identity pretraining with its real data path: the shard loader alone, the step alone, both.

Issue target (H100, bf16, input 160): the data path (tar shards → JPEG decode → batches) sustains at least the
model's img/s, and the training loop waits for data ≤ 5 % of its time.

Two decode modes (``--decode``, the stage's ``pretrain.decode``): ``worker`` = OpenCV decodes in the DataLoader
worker processes and the decoded batch travels to the training process; ``device`` = the workers only read the
bytes (:class:`~pipeline.training.shard_data.ShardBytes`) and the training process decodes each batch on its
device (:func:`pipeline.training.shard_decode.decode_faces`: torchvision, nvJPEG on CUDA; needs torchvision,
which the GPU box has).

Data: ``--faces`` synthetic 182×182 RGB "faces" of ``--identities`` classes (a class colour, a smooth ramp in a
random direction, a bright ellipse, Gaussian noise: JPEG-compressible like an aligned face, not like white noise)
written as ``--shards`` tar shards by the align stage's own writer (:func:`pipeline.faces.shards.write_shard`,
JPEG quality 95 as ``params.yaml``) into a temporary folder, with an ``index.npz`` (shard, offset, length, labels,
size). ``--data DIR`` writes them to DIR instead, or reuses DIR when it already holds an ``index.npz``.
The faces are read by :class:`~pipeline.training.shard_data.ShardFaces` exactly as the stage reads them.

Rows, per global batch (``--batch-sizes``):

- **loader** (per ``--workers`` count W and decode mode): iterate ``make_loader(ShardFaces, ShardBatchSampler,
  workers=W, pin_memory=<CUDA>, decode=...)``: ``pread`` + decode + batching + the transfer from the worker
  processes; with ``device`` decoding, encoded batches + ``decode_faces`` on the device, synchronised. ``W`` workers
  deliver batches in bursts of W, so the warm-up (``--warmup`` batches, which include starting the workers; not
  timed) and the timed batches (``--steps``, at least ``2 · prefetch · W`` so batches that were ready early
  cannot hide a slow loader) are rounded up to multiples of ``max(W, 1)``. img/s = timed images / wall time.
- **model** (per precision × depth): :class:`pipeline.training.pretrain.PretrainStep` built as ``run_pretrain``
  builds it (``MultiTaskInceptionResNetV1`` with one ``identity`` head, ``build_optimizer``, ``CenterLoss``,
  channels-last on CUDA, DDP when N processes) with ``--params``' ``pretrain.train`` settings (optimiser, schedule,
  center loss, dropout...; read with PyYAML into :mod:`pipeline.settings`, no pydantic) and this benchmark's batch,
  depth, input size, crop and precision, on one fixed batch of decoded faces already pre-processed on the device;
  ``--warmup`` steps, then ``--steps`` steps each between ``cuda.synchronize()`` calls; img/s from the median step
  time (``img_per_s_mean`` from the mean, which the both rows are compared with).
- **both** (per precision × depth × W × decode mode): ``run_pretrain``'s loop body: set the rate, ``next()`` on the
  loader (time blocked there = data stall), ``batch_to_device`` (``.to(device, non_blocking=True)``, or the
  device decode), reseed from ``step_seed``,
  :func:`pipeline.training.data.preprocess` (random 160 crop of 182, flip, resize to ``--input-size``,
  standardisation, channels-last on CUDA), the step. ``--warmup`` steps, then ``--steps`` timed steps; img/s =
  images / wall time, ``stall`` = blocked-in-``next()`` time / wall time.

``--processes N`` (N > 1) adds model and both rows with N processes: after the one-process rows the script starts
``python -m torch.distributed.run --standalone --nproc_per_node=N -m bench.pretrain --worker SETTINGS`` (NCCL on
CUDA, gloo on CPU, via :func:`pipeline.training.distributed.from_env`); every rank trains its slice
(``batch / N``) of each global batch with DDP and its ``ShardBatchSampler(rank, world)``; rank 0 writes the rows
(global img/s from the slowest rank's time, img/s per process, mean and worst stall over the ranks) and this
process merges them into its table and JSON. Skipped when CUDA shows fewer than N GPUs; on CPU the ranks share
the cores (a correctness/overhead check, not scaling).

``--max-seconds`` bounds the run; configurations that no longer fit are listed as skipped.

Needs only torch, numpy, OpenCV and PyYAML, plus torchvision for ``--decode device`` (``pipeline/training/pretrain.py``
imports its verification code, which needs scikit-learn and SciPy, only when a run verifies). The JSON records
which heavy modules were imported (none on any rank; torchvision when device decoding was asked for).

CPU, here (tiny; the second line adds two gloo processes to the same JSON)::

    .venv/bin/python -m bench.pretrain --device cpu --batch-sizes 8 --input-size 80 --depths reduced \
        --precisions fp32 --workers 0,1 --steps 3 --warmup 1 --threads 1 --processes 2
                                                                    # → reports/bench/pretrain-cpu.json

GPU box (torch, numpy, opencv only; a few minutes, bounded by ``--max-seconds``)::

    PYTHONPATH=. python -m bench.pretrain --device cuda --commit "<commit> + uncommitted"
                                                                    # → reports/bench/pretrain-cuda.json
    PYTHONPATH=. python -m bench.pretrain --device cuda --batch-sizes 512 --precisions bf16 --depths reduced \
        --workers 2,4,6 --decode worker,device --out reports/bench/pretrain-cuda-decode.json  # the decode modes
    PYTHONPATH=. python -m bench.pretrain --device cuda --processes 8 --batch-sizes 512 --precisions bf16 \
        --depths reduced --out reports/bench/pretrain-cuda-8proc.json  # a multi-GPU box
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import device_name, loadavg, plain_settings, print_results, run_info, write_json
from pipeline.faces.shards import shard_name, write_shard
from pipeline.losses.center import CenterLoss
from pipeline.models.network import FEATURES, HeadSpec, ModelConfig, count_parameters
from pipeline.settings import PrecisionSettings, PretrainRuntime, PretrainSettings, from_mapping
from pipeline.training.data import preprocess
from pipeline.training.distributed import DistContext, from_env, launched_by_torchrun
from pipeline.training.optim import build_optimizer
from pipeline.training.shard_data import DECODE_MODES, ShardBatchSampler, ShardFaces, make_loader
from pipeline.training.shard_decode import batch_to_device
from pipeline.training.step import NonFiniteError

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("bf16", "fp32")
DEPTHS = ("reduced", "full")
#: packages the benchmark must not import (the GPU box lacks all but torchvision and Pillow, which only
#: ``--decode device`` imports)
HEAVY = ("pandas", "pyarrow", "sklearn", "scipy", "pydantic", "mlflow", "PIL", "torchvision")
TABLE = ["processes", "kind", "batch", "precision", "depth", "workers", "decode", "img_per_s", "img_per_s_per_process",
         "ms_per_batch", "stall", "loader_over_model", "loop_over_model"]


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    """Everything a run needs (also handed to the ranks of an N-process run as JSON)."""

    device: str
    batch_sizes: list[int]
    precisions: list[str]
    depths: list[str]
    workers: list[int]
    decodes: list[str]
    input_size: int
    crop: int
    stored_size: int
    faces: int
    identities: int
    shards: int
    steps: int
    warmup: int
    prefetch: int
    threads: int | None
    channels_last: bool
    max_seconds: float
    params: str = "params.yaml"  #: the params file whose ``pretrain.train`` the step uses
    data: str | None = None  #: shard folder (written or reused)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _ints(values: list[str]) -> list[int]:
    """``["0,1", "4"]`` → ``[0, 1, 4]`` (lists as ``a,b`` or ``a b``)."""
    return [int(v) for item in values for v in item.split(",") if v]


def _words(values: list[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


@functools.lru_cache(maxsize=4)
def read_settings(path: str) -> PretrainSettings:
    """``pretrain.train`` of a params file (PyYAML, no validation: the stage validates the same file); read once."""
    import yaml

    return from_mapping(PretrainSettings, yaml.safe_load(Path(path).read_text())["pretrain"]["train"])


# ------------------------------------------------------------------------------------------------ imports
def load_pretrain() -> tuple[types.ModuleType, str]:
    """``pipeline.training.pretrain`` and how it was loaded (recorded in the JSON)."""
    name = "pipeline.training.pretrain"
    return importlib.import_module(name), name


def heavy_modules() -> list[str]:
    """The packages of :data:`HEAVY` this process has imported."""
    return sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))


# ------------------------------------------------------------------------------------------------ data
def synthetic_faces(labels: np.ndarray, size: int, seed: int) -> Iterator[np.ndarray]:
    """One ``(size, size, 3)`` uint8 RGB face per label: class colour + ramp + bright ellipse + noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng([seed, 1]).uniform(50, 190, (int(labels.max()) + 1, 3)).astype(np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    for y in labels:
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(theta) * xx + np.sin(theta) * yy) * rng.uniform(30, 90)
        cy, cx = rng.normal(0, 0.04, 2)
        blob = 50 * np.exp(-(((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.23) ** 2))
        img = palette[y] + (ramp + blob)[..., None] + rng.normal(0, 5, (size, size, 3))
        yield np.clip(img, 0, 255).astype(np.uint8)


def write_data(root: Path, n_faces: int, identities: int, shards: int, size: int, seed: int) -> None:
    """``shards`` tar shards of ``n_faces`` synthetic faces (identities shuffled) + ``index.npz``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_faces) % identities)
    shard = np.arange(n_faces) * shards // n_faces  # consecutive, near-equal parts
    offset, length = np.zeros(n_faces, np.int64), np.zeros(n_faces, np.int64)
    for k in range(shards):
        members = np.flatnonzero(shard == k)
        ranges = write_shard(root / shard_name(k), list(synthetic_faces(labels[members], size, seed + 1 + k)))
        offset[members] = [o for o, _ in ranges]
        length[members] = [n for _, n in ranges]
    np.savez(root / "index.npz", shard=shard, offset=offset, length=length, labels=labels, size=size)


def open_data(root: Path, stored_size: int) -> ShardFaces:
    """The faces of a folder written by :func:`write_data`.

    Raises:
        SystemExit: the folder's faces are not ``stored_size`` px.
    """
    m = np.load(root / "index.npz")
    if int(m["size"]) != stored_size:
        raise SystemExit(f"--data {root}: its faces are {int(m['size'])} px, --stored-size is {stored_size}")
    return ShardFaces(root, m["shard"], m["offset"], m["length"], m["labels"], int(m["size"]))


# ------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_over_ranks(dist: DistContext, values: list[float]) -> list[float]:
    """Each value's maximum over the ranks (itself in a world of one)."""
    if not dist.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.startswith("cuda") else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def mean_over_ranks(dist: DistContext, values: list[float]) -> list[float]:
    if not dist.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.startswith("cuda") else "cpu")
    return dist.mean(t).tolist()


def rounded(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit``."""
    return unit * math.ceil(n / unit)


def time_loader(faces: ShardFaces, batch: int, workers: int, s: Settings, device: torch.device,
                decode: str) -> dict[str, Any]:
    """The loader row: img/s of reading, decoding and batching alone (see the module docstring); with ``device``
    decoding the batch is decoded on ``device`` and synchronised."""
    sampler = ShardBatchSampler(faces.shard, batch, seed=1)
    loader = make_loader(faces, sampler, workers=workers, pin_memory=device.type == "cuda", prefetch=s.prefetch,
                         decode=decode)
    unit = max(workers, 1)
    n_warm, n_timed = rounded(max(s.warmup, 1), unit), rounded(max(s.steps, 2 * s.prefetch * unit), unit)

    def one(it: Iterator[Any]) -> None:
        batch = next(it)
        if decode == "device":
            batch_to_device(batch, faces, device)
            sync(device)

    t_start = time.perf_counter()
    it = iter(loader)
    for _ in range(n_warm):
        one(it)
    t0 = time.perf_counter()
    for _ in range(n_timed):
        one(it)
    elapsed = time.perf_counter() - t0
    del it, loader  # the last references: persistent workers shut down
    gc.collect()
    return {"kind": "loader", "batch": batch, "local_batch": batch, "workers": workers, "decode": decode,
            "steps": n_timed,
            "warmup": n_warm, "img_per_s": batch * n_timed / elapsed, "ms_per_batch": 1000 * elapsed / n_timed,
            "startup_s": round(t0 - t_start, 3)}


# ------------------------------------------------------------------------------------------------ the step
@dataclass
class Trainer:
    """A :class:`PretrainStep` with what the loop body needs around it."""

    pt: types.ModuleType
    spec: Any  #: PretrainSpec
    step_fn: Any  #: PretrainStep
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dist: DistContext
    device: torch.device
    channels_last: bool
    generator: torch.Generator
    step: int = 0

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Reseed as ``run_pretrain`` does, then :func:`preprocess` (random crop, flip, resize, standardise)."""
        s = self.spec.settings
        seed = self.pt.step_seed(s.seed, self.step, self.dist.rank)
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)
        return preprocess(raw, crop=s.crop.size, input_size=s.network.input_size, train=True,
                          random_crop=s.crop.random, flip=s.crop.flip, generator=self.generator,
                          channels_last=self.channels_last)

    def train(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Set the rate and the phase, one step."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.spec.schedule.at(self.step)
        self.model.set_phase(train=True, frozen_bn=())
        values = self.step_fn(x, y)
        self.step += 1
        return values

    @property
    def batch_size(self) -> int:
        return self.spec.settings.batch_size


def build_trainer(pt: types.ModuleType, s: Settings, batch: int, precision: str, depth: str, n_classes: int,
                  dist: DistContext) -> Trainer:
    """The model, optimiser, centers and :class:`PretrainStep` exactly as ``run_pretrain`` builds them."""
    device = torch.device(dist.device)
    base = read_settings(s.params)
    settings = dataclasses.replace(
        base, init="random", batch_size=batch, steps=s.warmup + s.steps,
        network=dataclasses.replace(base.network, depth=depth, input_size=s.input_size),
        crop=dataclasses.replace(base.crop, size=s.crop),
        precision=PrecisionSettings(amp=precision == "bf16", channels_last=s.channels_last))
    runtime = PretrainRuntime(device=dist.device, threads=0, eval_batch_size=100, compile=False, workers=0,
                              decode="worker")
    spec = pt.pretrain_spec(settings, n_classes=n_classes, align_convention="paper_182_44", checkpoint=None,
                            runtime=runtime)
    torch.manual_seed(settings.seed)
    model = pt.build_pretrain_model(spec).to(device)
    channels_last = settings.precision.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(settings.optimizer, params, spec.schedule.at(0))
    centers = None
    if settings.center_loss.factor:
        centers = CenterLoss(n_classes, FEATURES, alpha=settings.center_loss.alpha,
                             form=settings.center_loss.form).to(device)
    forward: torch.nn.Module = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        with warnings.catch_warnings():  # torch >= 2.10 deprecates the argument run_pretrain passes
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              broadcast_buffers=True)
    step_fn = pt.PretrainStep(model, forward, optimizer, centers, dist,
                              center_loss_factor=settings.center_loss.factor,
                              clip_norm=settings.optimizer.clip_norm, amp=settings.precision.amp)
    return Trainer(pt, spec, step_fn, model, optimizer, dist, device, channels_last,
                   torch.Generator(device=device))


def time_model(tr: Trainer, faces: ShardFaces, s: Settings) -> dict[str, Any]:
    """The model row: median step time on one fixed pre-processed batch already on the device."""
    local = tr.batch_size // tr.dist.world
    sampler = ShardBatchSampler(faces.shard, tr.batch_size, seed=2, rank=tr.dist.rank, world=tr.dist.world)
    raw, y = faces.__getitems__(sampler.batch(0).tolist())
    x, y = tr.prepare(raw.to(tr.device)), y.to(tr.device)
    for _ in range(s.warmup):
        tr.train(x, y)
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(tr.device)
    times = []
    for _ in range(s.steps):
        sync(tr.device)
        t0 = time.perf_counter()
        last = tr.train(x, y)
        sync(tr.device)
        times.append(time.perf_counter() - t0)
    (med,) = max_over_ranks(tr.dist, [statistics.median(times)])
    return {"kind": "model", "batch": tr.batch_size, "local_batch": local, "steps": s.steps,
            "warmup": s.warmup, "img_per_s": tr.batch_size / med, "ms_per_batch": 1000 * med,
            "img_per_s_mean": tr.batch_size / max_over_ranks(tr.dist, [statistics.fmean(times)])[0],
            "peak_mib": round(torch.cuda.max_memory_allocated(tr.device) / 2**20, 1)
            if tr.device.type == "cuda" else None,
            "params_m": round(count_parameters(tr.model) / 1e6, 2), "last_loss": round(last["loss"], 4)}


def loop_body(tr: Trainer, batches: Iterator[Any], faces: ShardFaces) -> float:
    """One iteration of ``run_pretrain``'s loop; returns the seconds blocked waiting for the batch."""
    tw = time.perf_counter()
    batch = next(batches)
    waited = time.perf_counter() - tw
    raw, y = batch_to_device(batch, faces, tr.device)
    tr.train(tr.prepare(raw), y)
    return waited


def time_both(tr: Trainer, faces: ShardFaces, workers: int, s: Settings, decode: str) -> dict[str, Any]:
    """The both row: ``run_pretrain``'s loop body (loader → device → preprocess → step) and its data stall."""
    sampler = ShardBatchSampler(faces.shard, tr.batch_size, seed=tr.spec.settings.seed, rank=tr.dist.rank,
                                world=tr.dist.world)
    loader = make_loader(faces, sampler, workers=workers, pin_memory=tr.device.type == "cuda",
                         prefetch=s.prefetch, decode=decode)
    it = iter(loader)
    for _ in range(s.warmup):
        loop_body(tr, it, faces)
    sync(tr.device)
    t0 = time.perf_counter()
    waited = sum(loop_body(tr, it, faces) for _ in range(s.steps))
    sync(tr.device)
    elapsed = time.perf_counter() - t0
    del it, loader  # the last references: persistent workers shut down
    gc.collect()
    (slowest,) = max_over_ranks(tr.dist, [elapsed])
    (stall_mean,) = mean_over_ranks(tr.dist, [waited / elapsed])
    (stall_max,) = max_over_ranks(tr.dist, [waited / elapsed])
    return {"kind": "both", "batch": tr.batch_size, "local_batch": tr.batch_size // tr.dist.world,
            "workers": workers, "decode": decode, "steps": s.steps, "warmup": s.warmup,
            "img_per_s": tr.batch_size * s.steps / slowest, "ms_per_batch": 1000 * slowest / s.steps,
            "stall": stall_mean, "stall_worst_rank": stall_max}


# ------------------------------------------------------------------------------------------------ runs
def model_configs(s: Settings) -> Iterator[tuple[int, str, str]]:
    """``(batch, precision, depth)`` in run order: batch, then precision (bf16 first), then depth."""
    order = {p: i for i, p in enumerate(PRECISIONS)}
    for batch in s.batch_sizes:
        for precision in sorted(s.precisions, key=order.__getitem__):
            for depth in s.depths:
                yield batch, precision, depth


def run_rows(pt: types.ModuleType, s: Settings, faces: ShardFaces, dist: DistContext, deadline: float,
             say: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All rows of one process count (loader rows only with one process); returns ``(rows, skipped)``."""
    device = torch.device(dist.device)
    n_classes = int(faces.labels.max()) + 1
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    common = {"processes": dist.world, "input": s.input_size}

    def over_time() -> bool:
        return dist.any(time.perf_counter() > deadline)

    if not dist.active:
        for batch in s.batch_sizes:
            for decode in s.decodes:
                for w in s.workers:
                    label = f"loader b{batch} w{w} decode={decode}"
                    if over_time():
                        skipped.append({"config": label, "why": "time budget (--max-seconds)"})
                        continue
                    rows.append({**common, **time_loader(faces, batch, w, s, device, decode)})
                    say(f"  {label:40s} {rows[-1]['img_per_s']:9.1f} img/s")
    for batch, precision, depth in model_configs(s):
        label = f"{dist.world}p b{batch} {precision} {depth}"
        if over_time():
            skipped.append({"config": f"model/both {label}", "why": "time budget (--max-seconds)"})
            continue
        try:
            tr = build_trainer(pt, s, batch, precision, depth, n_classes, dist)
            cfg = {**common, "precision": precision, "depth": depth}
            rows.append({**cfg, **time_model(tr, faces, s)})
            say(f"  model {label:34s} {rows[-1]['img_per_s']:9.1f} img/s")
            for decode in s.decodes:
                for w in s.workers:
                    name = f"{label} w{w} decode={decode}"
                    if over_time():
                        skipped.append({"config": f"both {name}", "why": "time budget (--max-seconds)"})
                        continue
                    rows.append({**cfg, **time_both(tr, faces, w, s, decode)})
                    say(f"  both  {name:34s} {rows[-1]['img_per_s']:9.1f} img/s  "
                        f"stall {100 * rows[-1]['stall']:5.1f} %")
        except NonFiniteError as exc:  # raised on every rank together
            skipped.append({"config": label, "why": str(exc)[:300]})
        except torch.cuda.OutOfMemoryError as exc:
            if dist.active:
                raise  # the other ranks would wait forever
            skipped.append({"config": label, "why": f"CUDA out of memory: {exc}"[:200]})
        tr = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        r["img_per_s_per_process"] = r["img_per_s"] / dist.world
    return rows, skipped


def add_derived(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """On both rows: ``loader_over_model`` (the one-process loader img/s at that batch, W and decode mode ÷ the
    model's img/s per process at the same process count) and ``loop_over_model`` (the loop's img/s, a mean over
    its wall time, ÷ the model's mean-step img/s: the same statistic on both sides).
    Returns the issue's targets per model configuration, read on its fastest both row: stall ≤ 5 %, the loader
    alone at least as fast as the model, and the loop within 5 % of the model (a loop can wait little for data
    and still run slower than the step, when the decoders slow the training process down)."""
    goals = []
    for r in rows:
        if r["kind"] != "both":
            continue
        loader = next((x for x in rows if x["kind"] == "loader" and x["batch"] == r["batch"]
                       and x["workers"] == r["workers"] and x["decode"] == r["decode"]), None)
        model = next((x for x in rows if x["kind"] == "model" and x["processes"] == r["processes"]
                      and (x["batch"], x["precision"], x["depth"]) == (r["batch"], r["precision"], r["depth"])), None)
        if model:
            r["loop_over_model"] = r["img_per_s"] / model["img_per_s_mean"]
        if loader and model:
            r["loader_over_model"] = loader["img_per_s"] / model["img_per_s_per_process"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "both":
            groups.setdefault((r["processes"], r["batch"], r["precision"], r["depth"]), []).append(r)
    for (n, batch, precision, depth), members in groups.items():
        best = max(members, key=lambda r: r["img_per_s"])
        label = f"{n}p b{batch} {precision} {depth} w{best['workers']} decode={best['decode']}"
        goals.append({"target": f"{label}: stall <= 5 %", "value": best["stall"], "goal": 0.05,
                      "met": best["stall"] <= 0.05})
        if best.get("loader_over_model") is not None:
            goals.append({"target": f"{label}: loader img/s >= model img/s", "value": best["loader_over_model"],
                          "goal": 1.0, "met": best["loader_over_model"] >= 1.0})
        if best.get("loop_over_model") is not None:
            goals.append({"target": f"{label}: loop img/s >= 95 % of model img/s", "value": best["loop_over_model"],
                          "goal": 0.95, "met": best["loop_over_model"] >= 0.95})
    return goals


# ------------------------------------------------------------------------------------------------ N processes
def run_processes(n: int, s: Settings, deadline: float, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start ``n`` ranks under ``torch.distributed.run`` (see the module docstring); their rows and a record."""
    remaining = deadline - time.perf_counter()
    record: dict[str, Any] = {"processes": n}
    if s.device.startswith("cuda") and torch.cuda.device_count() < n:
        record["skipped"] = f"--processes {n} needs {n} GPUs, {torch.cuda.device_count()} visible"
        return [], record
    if remaining < 5:
        record["skipped"] = "time budget (--max-seconds)"
        return [], record
    settings = work / "settings.json"
    result = work / f"rows-{n}proc.json"
    settings.write_text(json.dumps({**asdict(s), "max_seconds": remaining, "result": str(result)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
           "bench.pretrain", "--worker", str(settings)]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(s.threads or max(1, (os.cpu_count() or 1) // n))}
    record["command"] = " ".join(["python", *cmd[1:-1], "SETTINGS"])
    if not s.device.startswith("cuda"):
        record["note"] = f"CPU: the {n} ranks (and their loader workers) share the {os.cpu_count()} cores"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=remaining + 300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its ranks: this call's own process group
        proc.wait()
        rc = None
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    if rc != 0 or not result.is_file():
        record["skipped"] = f"the {n}-process run failed (exit status {rc}); its output is above"
        return [], record
    out = json.loads(result.read_text())
    record.update(skipped_configs=out["skipped"], heavy_modules_loaded=out["heavy_modules_loaded"],
                  backend=out["backend"], threads_per_rank=out["threads"])
    return out["rows"], record


def worker_main(settings_path: Path) -> None:
    """One rank of an N-process run (``--worker``): its rows, written by rank 0."""
    raw = json.loads(settings_path.read_text())
    result = Path(raw.pop("result"))
    s = Settings(**raw)
    if not launched_by_torchrun():
        raise SystemExit("--worker is for the ranks started by --processes (torch.distributed.run)")
    if s.threads:
        torch.set_num_threads(s.threads)
    deadline = time.perf_counter() + s.max_seconds
    dist = from_env(s.device)
    pt, _ = load_pretrain()
    faces = open_data(Path(s.data or ""), s.stored_size)
    say = (lambda line: print(line, flush=True)) if dist.is_main else (lambda line: None)
    rows, skipped = run_rows(pt, s, faces, dist, deadline, say)
    heavy = [m for rank in _gather(dist, heavy_modules()) for m in rank]
    if dist.is_main:
        result.write_text(json.dumps({"rows": rows, "skipped": skipped, "heavy_modules_loaded": sorted(set(heavy)),
                                      "backend": torch.distributed.get_backend(), "threads": torch.get_num_threads()}))
    dist.barrier()
    dist.close()


def _gather(dist: DistContext, obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda if available)")
    ap.add_argument("--batch-sizes", nargs="+", default=None, help="global batches (default CUDA 90 512, CPU 16)")
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="bf16 (autocast, CUDA only) and/or fp32 (default both on CUDA, fp32 on CPU)")
    ap.add_argument("--depths", nargs="+", default=None, help="reduced and/or full (default CUDA both, CPU reduced)")
    ap.add_argument("--workers", nargs="+", default=None,
                    help="DataLoader worker counts, e.g. 0,2,4,8 (default CUDA 2,4,8; CPU 0,1)")
    ap.add_argument("--decode", nargs="+", default=None,
                    help="worker and/or device: where faces are decoded (pretrain.runtime.decode; default "
                         "worker; device needs torchvision)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml",
                    help="the params file whose pretrain.train settings the step uses")
    ap.add_argument("--input-size", type=int, default=160, help="model input side (the crop is resized to it)")
    ap.add_argument("--crop", type=int, default=160, help="random crop of the stored faces")
    ap.add_argument("--stored-size", type=int, default=182, help="side of the stored (aligned) faces")
    ap.add_argument("--faces", type=int, default=None, help="synthetic faces (default max(2048, 2 x largest batch))")
    ap.add_argument("--identities", type=int, default=500, help="identity classes of the synthetic faces")
    ap.add_argument("--shards", type=int, default=4, help="tar shards the faces are written to")
    ap.add_argument("--data", type=Path, default=None, help="shard folder to write, or to reuse (holds index.npz)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps/batches per row (default CUDA 20, CPU 5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps/batches before")
    ap.add_argument("--prefetch", type=int, default=4, help="DataLoader prefetch_factor (make_loader's default)")
    ap.add_argument("--processes", type=int, default=1, help="N > 1: add N-process (DDP) rows via torchrun")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last model and input on CUDA (the stage's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU; per rank)")
    ap.add_argument("--max-seconds", type=float, default=None, help="time budget (default CUDA 300, CPU 600)")
    ap.add_argument("--commit", default=None, help="record this commit (e.g. on a copy without .git)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default reports/bench/pretrain-<cpu|cuda>.json)")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv), ap


def resolve(args: argparse.Namespace, ap: argparse.ArgumentParser) -> tuple[Settings, torch.device]:
    """Defaults per device and the checks of the arguments (one-line errors)."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    try:
        batches = _ints(args.batch_sizes) if args.batch_sizes else ([90, 512] if cuda else [16])
        workers = _ints(args.workers) if args.workers else ([2, 4, 8] if cuda else [0, 1])
    except ValueError as exc:
        ap.error(f"--batch-sizes and --workers take integers: {exc}")
    precisions = _words(args.precisions) if args.precisions else (list(PRECISIONS) if cuda else ["fp32"])
    depths = _words(args.depths) if args.depths else (list(DEPTHS) if cuda else ["reduced"])
    decodes = _words(args.decode) if args.decode else ["worker"]
    if bad := [d for d in decodes if d not in DECODE_MODES]:
        ap.error(f"--decode: unknown {bad}, expected {' '.join(DECODE_MODES)}")
    if bad := [p for p in precisions if p not in PRECISIONS]:
        ap.error(f"--precisions: unknown {bad}, expected {' '.join(PRECISIONS)}")
    if bad := [d for d in depths if d not in DEPTHS]:
        ap.error(f"--depths: unknown {bad}, expected {' '.join(DEPTHS)}")
    if min(batches) < 1 or min(workers) < 0:
        ap.error("--batch-sizes must be >= 1 and --workers >= 0")
    if args.processes < 1:
        ap.error(f"--processes must be >= 1, got {args.processes}")
    if bad := [b for b in batches if b % args.processes]:
        ap.error(f"--batch-sizes {' '.join(map(str, bad))} not a multiple of --processes {args.processes}")
    steps = args.steps if args.steps is not None else (20 if cuda else 5)
    if steps < 1 or args.warmup < 0 or args.prefetch < 1:
        ap.error("--steps and --prefetch must be >= 1, --warmup >= 0")
    if not 0 < args.crop <= args.stored_size:
        ap.error(f"--crop {args.crop} must be in 1..--stored-size ({args.stored_size})")
    if args.identities < 1 or args.shards < 1:
        ap.error("--identities and --shards must be >= 1")
    faces = args.faces if args.faces is not None else max(2048, 2 * max(batches))
    if faces < max(batches):
        ap.error(f"--faces {faces} is fewer than one batch of {max(batches)}")
    if not Path(args.params).is_file():
        ap.error(f"--params: {args.params} not found")
    base = read_settings(str(args.params))
    try:  # the model's own checks (input_size >= 75: Mixed_7a needs a 1x1 grid)
        ModelConfig(heads=(HeadSpec("identity", 2),), network=dataclasses.replace(base.network,
                    input_size=args.input_size), align_convention="paper_182_44", crop=base.crop)
    except ValueError as exc:
        ap.error(f"--input-size: {exc}")
    s = Settings(device=str(device), batch_sizes=batches, precisions=precisions, depths=depths, workers=workers,
                 decodes=list(dict.fromkeys(decodes)),
                 input_size=args.input_size, crop=args.crop, stored_size=args.stored_size, faces=faces,
                 identities=args.identities, shards=min(args.shards, faces), steps=steps, warmup=args.warmup,
                 prefetch=args.prefetch, threads=args.threads, channels_last=args.channels_last,
                 params=str(args.params),
                 max_seconds=args.max_seconds if args.max_seconds is not None else (300.0 if cuda else 600.0))
    if "bf16" in precisions and not cuda:
        s.precisions = [p for p in precisions if p != "bf16"]
        s.skipped.append({"config": "all bf16 rows", "why": "bf16 autocast runs on CUDA only (PretrainStep.amp)"})
    return s, device


def prepare_data(s: Settings, data: Path | None, tmp: Path) -> dict[str, Any]:
    """Write (or reuse) the shards; sets ``s.data`` and returns what the JSON records about them."""
    root = data if data is not None else tmp / "shards"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reused = (root / "index.npz").is_file()
    if not reused:
        write_data(root, s.faces, s.identities, s.shards, s.stored_size, seed=666)
    s.data = str(root)
    faces = open_data(root, s.stored_size)
    return {"folder": str(root) if data is not None else "(temporary)", "reused": reused, "faces": len(faces),
            "identities": int(faces.labels.max()) + 1, "shards": int(faces.shard.max()) + 1,
            "stored_size": faces.crop_size, "mean_jpeg_bytes": round(float(faces.length.mean()), 1),
            "write_s": None if reused else round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args, ap = parse(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return None
    s, device = resolve(args, ap)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or REPO / f"reports/bench/pretrain-{device.type}.json"
    t_all = time.perf_counter()
    deadline = t_all + s.max_seconds
    load_start = loadavg()
    pt, pt_source = load_pretrain()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        data = prepare_data(s, args.data, tmp)
        print(f"pretrain module: {pt_source}\ndata: {data}", flush=True)
        faces = open_data(Path(s.data or ""), s.stored_size)
        rows, skipped = run_rows(pt, s, faces, DistContext(device=str(device)), deadline,
                                 lambda line: print(line, flush=True))
        skipped = s.skipped + skipped
        multi = None
        if args.processes > 1:
            more, multi = run_processes(args.processes, s, deadline, tmp)
            rows += more
            skipped += multi.pop("skipped_configs", [])
            if "skipped" in multi:
                skipped.append({"config": f"all {args.processes}-process rows", "why": multi["skipped"]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    goals = add_derived(rows)

    print(f"\nPretraining data path on {device} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, input {s.input_size} (crop {s.crop} of {s.stored_size}), "
          f"{s.warmup} warm-up + {s.steps} timed steps\n")
    print_results(rows, TABLE, goals, skipped)
    info = run_info(args.commit, cwd=REPO)
    settings = {k: v for k, v in asdict(s).items() if k not in ("skipped", "data")}
    payload = {
        "benchmark": "pretrain",
        "machine": info,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "opencv": _cv2_version(),
                     "torchvision": getattr(sys.modules.get("torchvision"), "__version__", None),
                     "python": platform.python_version(), "cuda": torch.version.cuda if cuda else None,
                     "cudnn": torch.backends.cudnn.version() if cuda else None},
        "device": str(device),
        "device_name": device_name(device),
        "gpu": ({"count": torch.cuda.device_count(), "capability": list(torch.cuda.get_device_capability(device)),
                 "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
                if cuda else None),
        "torch_threads": torch.get_num_threads(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
        "settings": {**settings, "processes": args.processes,
                     "pretrain.train": plain_settings(read_settings(s.params))},
        "pretrain_module": pt_source,
        "data": data,
        "results": rows,
        "targets": goals,
        "skipped": skipped,
        "multi_process": multi,
        "heavy_modules_loaded": heavy_modules(),
        "loadavg_1_5_15": {"start": load_start, "end": loadavg()},
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    write_json(out, payload)
    return payload


def _cv2_version() -> str:
    import cv2

    return cv2.__version__


if __name__ == "__main__":
    main()
