"""Throughput of the fine-tuning stage's own training step (``TrainStep``), vs. facenet-pytorch's single-task step.

Issue 5 targets (H100, bf16, input 160): the reduced 2-task ``dynamic`` step at batch 512 ≥ 2× the img/s of
facenet-pytorch's full single-task ``InceptionResnetV1`` step; ≥ 4,000 img/s at batch 90. With ``--tasks 3``, the
caricature model's target: the reduced 3-task ``dynamic`` step at batch 256, bf16, ≥ 0.85× the img/s of the 2-task
``dynamic`` step in the same run.

What is timed, per (precision, batch, depth, method):

- **step**: one call of :class:`pipeline.training.step.TrainStep` on a fixed pre-processed batch: forward (bf16
  autocast when ``bf16``), every task's loss + center loss, the weighting, both ``autograd.grad`` passes,
  global-norm clipping, the single host copy of losses/weights/presence/norms with its finiteness check, both
  optimiser steps, the center update. Model, strategy, optimisers and centers are built exactly as
  ``pipeline/training/finetune.py`` builds them for ``init: random`` (see :func:`build_ours`): the settings are
  ``--params``' ``finetune.common`` and task set (:mod:`pipeline.settings`, read with PyYAML, no pydantic) with this
  benchmark's depth, input size, precision and compile, channels-last on CUDA.
- **step + data**: the loop's whole per-batch work: next indices of the permutation stream, gather from a uint8
  pool resident on the device (``LabelledImages.take``), :func:`pipeline.training.data.preprocess` (random 160 crop
  of the stored 182 px faces, resize when ``--input-size`` differs, per-image standardisation, channels-last),
  then the step. **preprocess** alone is also reported.
- methods: ``dynamic`` (the paper's unit, ``fer`` variant, the task set's tasks) and ``single_identity`` (same
  model, same ``TrainStep``, one-hot weights); ``--methods`` takes any method of ``finetune.methods`` or weighting
  name (its options from the method block of that name, else the defaults).
- ``--tasks 3`` adds, beside those 2-task rows (``task_set`` ``fr_fer``, ``section`` ``finetune``) and at the same
  batch sizes, precisions and depths, the caricature model's 3-branch step (``section`` ``cari``), built as the
  ``cari_train`` stage builds it: ``cari.common`` (:class:`~pipeline.settings.CariSettings`) instead of
  ``finetune.common``, its task set (``cari``: ``verif`` on every image, ``visual`` on photos only, ``cari`` on
  caricatures only) with its center blocks rewritten by ``cari.common.centers``
  (:func:`pipeline.training.center_policy.apply_center_policy`), and the methods ``--cari-methods`` of
  ``cari.methods`` (default ``dynamic``, whose ``variant: auto`` becomes the variant of the reader of the first of
  ``cari.datasets``, as the stage does: ``cavi`` for the CaVI demo; and ``single_verif``). Its pool has the real
  data's modality mask: half the images are photos, half caricatures; ``verif`` labels every image, ``visual`` the
  photos, ``cari`` the caricatures, ``-1`` elsewhere (``--cari-identities`` classes each). Each 3-task row gets
  ``ratio_to_2task`` = its img/s ÷ the 2-task row of the same precision, batch, depth and compile with the paired
  method (``dynamic`` ↔ ``dynamic``, ``single_verif`` ↔ ``single_identity``, else the same name); the JSON's
  ``task_ratios`` lists those pairs. Both sections take this benchmark's depth, input size (``cari.common``'s
  demo input of 80 is not used), precision and compile, and ``init: random`` (a pretrained start changes the
  weights, not the step); every center matrix has a row per class (``centers.size: train_ids`` would shrink it to
  the training identities: all of them here). Everything else of the two steps follows each section's own settings
  (e.g. the optimisers, the unit's variant, the center terms), as the two stages would train.
- **peer**: facenet-pytorch's ``InceptionResnetV1(classify=True, num_classes=N)`` (always the full depth; one
  identity task): forward, cross-entropy, ``backward``, ``torch.optim.Adam`` (``--peer-optimizer``) step,
  ``zero_grad``, the loss copied to the host, as its ``training.pass_epoch`` does. Same batch, precision,
  channels-last, data path. Only ``facenet_pytorch/models/inception_resnet_v1.py`` (+ ``utils/download.py``) is
  loaded, by file path, so the package ``__init__`` (MTCNN: torchvision, PIL…) never runs; ``requests``/``tqdm``
  (used only to download pretrained weights) are stubbed for that import when missing. Found on ``sys.path`` or
  in ``--facenet-path DIR`` (DIR holds the ``facenet_pytorch`` package folder); rows are skipped when absent.

Protocol: ``--warmup`` steps, then ``--steps`` timed steps, each between ``torch.cuda.synchronize()`` calls; the
median step time gives img/s. Peak GPU memory is ``max_memory_allocated`` over the timed steps (the model, the
optimiser states and the uint8 pool included). GFLOP/image = FLOPs of matmuls/convolutions counted by
``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward + both backward passes), per image;
with ``--peak-tflops`` (H100 SXM bf16 dense: 989) bf16 rows get the % of that peak. ``--compile`` adds compiled rows:
ours as the stage compiles (``finetune.runtime.compile: true``, the step's forward through ``torch.compile(model)``),
the peer with ``model.compile()``; compilation happens in the warm-up.
``--max-seconds`` bounds the run; configurations that no longer fit are listed as skipped (bf16 rows run first).

Needs only torch and PyYAML (no numpy, pandas, pyarrow, OpenCV, pydantic, scikit-learn): ``preprocess`` takes its
crops from the torch-only :mod:`pipeline.faces.crops` (noted in the JSON as ``preprocess_source``).

CPU, here (facenet-pytorch 2.6.0 unpacked with ``--no-deps`` into /tmp/fpt_site)::

    .venv/bin/python -m bench.train --device cpu --batch-sizes 16 --steps 3 --warmup 1 --threads 1 \
        --facenet-path /tmp/fpt_site                                        # → reports/bench/train-cpu.json

The 3-task step beside the 2-task one, on a CPU (fp32 only: bf16 autocast is CUDA-only, so the target's bf16 rows
need a GPU)::

    .venv/bin/python -m bench.train --device cpu --tasks 3 --batch-sizes 16 --steps 3 --warmup 1 --threads 1 \
        --precisions fp32 --methods dynamic single_identity --cari-methods dynamic single_verif \
        --facenet-path .venv/lib/python3.11/site-packages --out reports/bench/train-cpu-tasks3.json

GPU box (torch only; a copy of /tmp/fpt_site at build/fpt_site; about 3-4 minutes, bounded by ``--max-seconds``)::

    PYTHONPATH=. python -m bench.train --device cuda --facenet-path build/fpt_site --peak-tflops 989 \
        --commit "<commit> + uncommitted"                                   # → reports/bench/train-cuda.json

and the 3-task target (bf16, batch 256; also in ``bench/device_checks.sh``)::

    PYTHONPATH=. python -m bench.train --device cuda --tasks 3 --batch-sizes 256 --precisions bf16 \
        --depths reduced --methods dynamic single_identity --cari-methods dynamic single_verif \
        --facenet-path build/fpt_site --peak-tflops 989 --commit "<commit> + uncommitted" \
        --out reports/bench/train-cuda-tasks3.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import device_name, loadavg, plain_settings, print_results, print_table, run_info, write_json
from pipeline.constants import MODALITY_LABELS
from pipeline.models.network import count_parameters
from pipeline.settings import (
    CariSettings,
    FinetuneSettings,
    PrecisionSettings,
    RuntimeSettings,
    TaskSetSettings,
    from_mapping,
)
from pipeline.training.build import build_training, finetune_spec
from pipeline.training.center_policy import apply_center_policy
from pipeline.training.data import LabelledImages, PermutationStream, preprocess
from pipeline.training.step import NonFiniteError, TrainStep
from pipeline.weighting.options import parse_weighting

PRECISIONS = ("bf16", "fp32")
#: side of the aligned faces (paper_182_44) and the alignment convention of the benchmark's model
STORED_SIZE = 182
ALIGN_CONVENTION = "paper_182_44"
#: the labels of identity tasks (each has ``--identities`` classes in the 2-task set, ``--cari-identities`` in the
#: caricature one); ``identity_photos``/``identity_caricatures`` label one modality only
IDENTITY_LABELS = ("identity", *MODALITY_LABELS)
#: ``variant: auto`` of a caricature method: the variant of the dataset's reader (a copy of
#: ``pipeline.config.AUTO_VARIANTS``, which needs pydantic; tests/test_bench_train.py checks they agree)
AUTO_VARIANTS = {"cavi": "cavi", "webcaricature": "webcari"}
#: the variant when ``cari.datasets`` is empty (the issue's caricature target is CaVI's)
DEFAULT_AUTO_VARIANT = "cavi"
#: 2-task method a 3-task row is compared with (else the same name): the paper's unit with the paper's unit, the
#: single-task baseline on the first (identity) task with its counterpart
PAIRED_2TASK = {"dynamic": "dynamic", "single_verif": "single_identity"}
#: the issue's 3-task target: the 3-task dynamic step at batch 256, bf16, ≥ this × the 2-task dynamic step's img/s
TASKS3_GOAL = 0.85
TASKS3_BATCH = 256


@dataclass(frozen=True)
class StageSettings:
    """What the benchmark takes from a params file for one section: ``finetune`` (``finetune.common``, its task set,
    ``finetune.methods``) or ``cari`` (``cari.common``, its task set with the center policy applied,
    ``cari.methods``); the method blocks stay plain mappings (validating them needs pydantic)."""

    common: FinetuneSettings
    tasks: TaskSetSettings
    blocks: dict[str, dict[str, Any]]
    section: str = "finetune"
    #: what ``variant: auto`` becomes (the cari section), and the reader it follows
    auto_variant: str | None = None
    auto_reader: str | None = None

    @classmethod
    def read(cls, path: Path) -> StageSettings:
        import yaml

        raw = yaml.safe_load(Path(path).read_text())
        common = from_mapping(FinetuneSettings, raw["finetune"]["common"])
        tasks = from_mapping(TaskSetSettings, raw["task_sets"][common.task_set])
        return cls(common, tasks, dict(raw["finetune"].get("methods") or {}))

    @classmethod
    def read_cari(cls, path: Path) -> StageSettings:
        """The ``cari`` section as the ``cari_train`` stage reads it: ``cari.common`` (:class:`CariSettings`), the
        task set it names with its center blocks set by ``cari.common.centers``, ``cari.methods``; ``variant: auto``
        follows the reader of the first of ``cari.datasets`` (:data:`AUTO_VARIANTS`, ``fer`` for another reader, as
        the stage), :data:`DEFAULT_AUTO_VARIANT` without one.

        Raises:
            ValueError: no ``cari`` section, or a center policy the task set does not fit.
        """
        import yaml

        raw = yaml.safe_load(Path(path).read_text())
        cari = raw.get("cari")
        if not cari:
            raise ValueError(f"{path}: no cari section (--tasks 3 times the caricature model's step)")
        common = from_mapping(CariSettings, cari["common"])
        tasks = apply_center_policy(from_mapping(TaskSetSettings, raw["task_sets"][common.task_set]), common.centers)
        datasets = list(cari.get("datasets") or [])
        reader = (raw.get("datasets") or {}).get(datasets[0], {}).get("reader") if datasets else None
        variant = AUTO_VARIANTS.get(reader, "fer") if reader else DEFAULT_AUTO_VARIANT
        return cls(common, tasks, dict(cari.get("methods") or {}), section="cari", auto_variant=variant,
                   auto_reader=reader)

    def method(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(weighting, options)`` of the method block ``name``, or of the weighting ``name`` with its defaults;
        ``variant: auto`` resolved (:meth:`read_cari`)."""
        block = dict(self.blocks.get(name) or {"weighting": name})
        block.pop("epochs", None)
        if block.get("variant") == "auto":
            block["variant"] = self.auto_variant or DEFAULT_AUTO_VARIANT
        return block.pop("weighting"), block

    def n_classes(self, identities: int, classes: int) -> dict[str, int]:
        """Classes per task: ``identities`` for an identity task, 2 for ``is_caricature``, else ``classes``."""
        return {name: identities if task.label in IDENTITY_LABELS else 2 if task.label == "is_caricature"
                else classes for name, task in self.tasks.tasks.items()}


def pool_labels(tasks: TaskSetSettings, n_classes: dict[str, int], n: int, generator: torch.Generator,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Random labels of ``n`` pool images for ``tasks``, with the real data's modality mask: images ``1, 3, 5…``
    are caricatures, the others photos; every identity task shares one identity per image, ``identity_photos``
    labels the photos only, ``identity_caricatures`` the caricatures only (``-1`` elsewhere); a label-set task gets
    random classes. (For ``fr_fer`` this draws what the benchmark always drew: identity, then expression.)"""
    caricature = torch.arange(n, device=device) % 2 == 1
    ids: torch.Tensor | None = None
    out = {}
    for name, task in tasks.tasks.items():
        if task.label in IDENTITY_LABELS:
            if ids is None:
                ids = torch.randint(0, n_classes[name], (n,), generator=generator, device=device)
            keep = (~caricature if task.label == "identity_photos" else caricature
                    if task.label == "identity_caricatures" else torch.ones_like(caricature))
            out[name] = torch.where(keep, ids, torch.full_like(ids, -1))
        elif task.label == "is_caricature":
            out[name] = caricature.long()
        else:
            out[name] = torch.randint(0, n_classes[name], (n,), generator=generator, device=device)
    return out


# ------------------------------------------------------------------------------------------------ imports
def ensure_preprocess() -> str:
    """Where :func:`preprocess`'s crops come from (torch-only :mod:`pipeline.faces.crops`, no pandas/OpenCV)."""
    return "pipeline.faces.crops"


def _stub_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for ``requests`` and ``tqdm``: facenet-pytorch uses them only to download pretrained weights."""
    requests = types.ModuleType("requests")
    adapters = types.ModuleType("requests.adapters")
    adapters.HTTPAdapter = type("HTTPAdapter", (), {})  # type: ignore[attr-defined]
    requests.adapters = adapters  # type: ignore[attr-defined]
    tqdm = types.ModuleType("tqdm")
    tqdm_auto = types.ModuleType("tqdm.auto")
    tqdm.tqdm = tqdm_auto.tqdm = type("tqdm", (), {})  # type: ignore[attr-defined]
    tqdm.auto = tqdm_auto  # type: ignore[attr-defined]
    return {"requests": requests, "requests.adapters": adapters, "tqdm": tqdm, "tqdm.auto": tqdm_auto}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_facenet_irv1(facenet_path: Path | None) -> tuple[type[nn.Module] | None, str]:
    """facenet-pytorch's ``InceptionResnetV1`` class, loaded by file path, or (None, why not)."""
    if facenet_path is not None:
        root = facenet_path / "facenet_pytorch"
    else:
        try:
            spec = importlib.util.find_spec("facenet_pytorch")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            return None, "facenet_pytorch not found on sys.path (give --facenet-path DIR)"
        root = Path(next(iter(spec.submodule_search_locations)))
    source = root / "models" / "inception_resnet_v1.py"
    if not source.is_file():
        return None, f"{source} not found"
    version = "unknown"
    for meta in sorted(root.parent.glob("facenet_pytorch-*.dist-info/METADATA")):
        version = next((line.split(":", 1)[1].strip() for line in meta.read_text().splitlines()
                        if line.startswith("Version:")), version)
    pkg = "_bench_facenet_pytorch"  # a private package name: the real package's __init__ never runs
    for name, folder in ((pkg, root), (f"{pkg}.models", root / "models"), (f"{pkg}.models.utils", root / "models"
                                                                               / "utils")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    stubbed = [top for top in ("requests", "tqdm") if not _importable(top)]
    saved = {}
    for name, stub in _stub_modules().items():
        if name.split(".")[0] in stubbed:
            saved[name] = sys.modules.get(name)
            sys.modules[name] = stub
    try:
        module = importlib.import_module(f"{pkg}.models.inception_resnet_v1")
    except Exception as exc:  # any problem in their module means "no peer rows"
        return None, f"{source}: {type(exc).__name__}: {exc}"
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    note = f"facenet-pytorch {version} ({source})"
    if stubbed:
        note += f"; stubbed for the import (weight download only): {', '.join(stubbed)}"
    return module.InceptionResnetV1, note


# ------------------------------------------------------------------------------------------------ the steps
def build_ours(method: str, depth: str, input_size: int, n_classes: dict[str, int], device: torch.device, *,
               amp: bool, channels_last: bool, s: StageSettings, compile: bool = False) -> tuple[TrainStep, nn.Module]:
    """The stage's ``TrainStep`` for ``method``, built as ``run_finetune`` builds it (``init: random``).

    The settings of ``s`` with this row's depth, input size and precision; model, strategy, optimisers, centers and
    step from :func:`pipeline.training.build.build_training` (what ``run_finetune`` calls); train phase without
    frozen BN or dropout (``init: random``).
    """
    c = s.common
    settings = dataclasses.replace(
        c, init="random", network=dataclasses.replace(c.network, depth=depth, input_size=input_size),
        precision=PrecisionSettings(amp=amp, channels_last=channels_last))
    torch.manual_seed(settings.seed)
    weighting, options = s.method(method)
    spec = finetune_spec(settings, s.tasks, strategy=parse_weighting(weighting, options, s.tasks.names), epochs=1,
                         n_classes=n_classes, class_names={}, align_convention=ALIGN_CONVENTION, checkpoint=None,
                         runtime=RuntimeSettings(device=str(device), threads=0, eval_batch_size=100, compile=compile))
    parts = build_training(spec, device)
    step, model = parts.step, parts.model
    model.set_phase(train=True, frozen_bn=(), dropout_off=())
    return step, model


class PeerStep:
    """facenet-pytorch's training step (``training.pass_epoch``) for one identity task, in the same precision."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: bool) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp = amp

    def __call__(self, x: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp and x.is_cuda else contextlib.nullcontext()
        with ctx:
            logits = self.model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels["identity"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach().cpu()


def build_peer(irv1: type[nn.Module], n_ids: int, device: torch.device, *, amp: bool, channels_last: bool,
               optimizer: str, lr: float, seed: int) -> tuple[PeerStep, nn.Module]:
    torch.manual_seed(seed)
    model = irv1(classify=True, num_classes=n_ids).to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.RMSprop(model.parameters(), lr=lr))
    return PeerStep(model, opt, amp), model


# ------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Config:
    model: str  #: ours | facenet-pytorch
    method: str
    depth: str
    precision: str
    batch: int
    compile: bool
    n_tasks: int  #: tasks of ours (the task set's)
    section: str = "finetune"  #: whose settings build ours: finetune (2-task fr_fer) | cari (3-task); peer: ""
    task_set: str = ""  #: the task set's name (peer: "")

    @property
    def tasks(self) -> int:
        return 1 if self.model == "facenet-pytorch" else self.n_tasks

    def label(self) -> str:
        model = f"{self.model} {self.section}" if self.section == "cari" else self.model
        return (f"{model} {self.method} {self.depth} {self.precision} b{self.batch}"
                + (" compiled" if self.compile else ""))


def run_config(cfg: Config, make: Callable[[], tuple[Callable, nn.Module]], pool: LabelledImages,
               prep_kw: dict[str, Any], device: torch.device, warmup: int, steps: int, seed: int,
               flops_cache: dict[tuple, float]) -> dict[str, Any]:
    """Build, warm up and time one configuration; returns its result row."""
    t_build = time.perf_counter()
    step_fn, model = make()
    if cfg.compile and cfg.model != "ours":  # ours was built compiled, as the stage builds it
        model.compile()
    build_s = time.perf_counter() - t_build
    stream = PermutationStream(len(pool), seed + 1)
    gen = torch.Generator(device=device).manual_seed(seed + 2)

    def next_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw, labels = pool.take(stream.next(cfg.batch))
        return preprocess(raw, generator=gen, **prep_kw), labels

    x, labels = next_batch()
    key = (cfg.model, cfg.section, cfg.method, cfg.depth, prep_kw["input_size"])
    t_warm = time.perf_counter()
    last: Any = None
    if key not in flops_cache and not cfg.compile:  # one counted step doubles as the first warm-up step
        flops_cache[key] = count_flops(lambda: step_fn(x, labels)) / cfg.batch / 1e9
    for _ in range(warmup):
        last = step_fn(x, labels)
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = timed(lambda: step_fn(x, labels), steps, device)
    peak = peak_mib(device)
    result: list[Any] = []
    loop_times = timed(lambda: result.append(step_fn(*next_batch())), steps, device)
    prep_times = timed(next_batch, steps, device)
    last = result[-1]
    med, med_loop, med_prep = (statistics.median(t) for t in (step_times, loop_times, prep_times))
    row: dict[str, Any] = {
        **asdict(cfg), "tasks": cfg.tasks, "input": prep_kw["input_size"], "warmup": warmup, "steps": steps,
        "img_per_s": cfg.batch / med, "ms_per_step": 1000 * med,
        "ms_all": [round(1000 * t, 2) for t in step_times],
        "img_per_s_with_data": cfg.batch / med_loop, "ms_per_step_with_data": 1000 * med_loop,
        "preprocess_img_per_s": cfg.batch / med_prep, "peak_mib": peak,
        "gflop_per_img": flops_cache.get(key), "params_m": round(count_parameters(model) / 1e6, 2),
        "build_s": round(build_s, 2), "warmup_s": round(warm_s, 2),
    }
    if hasattr(last, "weights"):  # a StepResult: the logged values of the last step (sanity)
        row.update(last_losses=[round(v, 4) for v in last.losses], last_weights=[round(v, 4) for v in last.weights],
                   last_present=list(last.present))
    else:
        row["last_losses"] = [round(float(last), 4)]
    return row


# ------------------------------------------------------------------------------------------------ main
def configs(args: argparse.Namespace, precisions: list[str], peer: bool, sections: dict[str, StageSettings]
            ) -> Iterator[Config]:
    """Order of the run: precision (bf16 first), batch, then the peer, then ours per depth: the 2-task methods
    (``--methods``), then the 3-task ones (``--cari-methods``, with ``--tasks 3``); compiled variants right after
    their eager row."""
    methods = {"finetune": args.methods, "cari": args.cari_methods}
    for prec in precisions:
        for b in args.batch_sizes:
            for compiled in [False, True] if args.compile else [False]:
                if peer:
                    yield Config("facenet-pytorch", "single_identity", "full", prec, b, compiled, 1, "", "")
                for depth in args.depths:
                    for section, s in sections.items():
                        for method in methods[section]:
                            yield Config("ours", method, depth, prec, b, compiled, len(s.tasks.names), section,
                                         s.common.task_set)


def add_derived(rows: list[dict[str, Any]], peak_tflops: float | None) -> None:
    for r in rows:
        if r.get("gflop_per_img") is not None:
            r["tflops"] = r["gflop_per_img"] * r["img_per_s"] / 1e3
            if peak_tflops and r["precision"] == "bf16":
                r["pct_of_peak"] = 100 * r["tflops"] / peak_tflops
        if r["model"] == "ours":
            peer = next((p for p in rows if p["model"] == "facenet-pytorch" and p["precision"] == r["precision"]
                         and p["batch"] == r["batch"] and p["compile"] == r["compile"]), None)
            if peer:
                r["ratio_to_peer"] = r["img_per_s"] / peer["img_per_s"]
                r["ratio_to_peer_with_data"] = r["img_per_s_with_data"] / peer["img_per_s_with_data"]


def paired_2task(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The 2-task row a 3-task row is compared with: same precision, batch, depth and compile, the paired method
    (:data:`PAIRED_2TASK`, else the same name)."""
    method = PAIRED_2TASK.get(row["method"], row["method"])
    return next((p for p in rows if p["model"] == "ours" and p["section"] == "finetune" and p["method"] == method
                 and all(p[k] == row[k] for k in ("precision", "batch", "depth", "compile"))), None)


def task_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per 3-task row with its 2-task pair: 3-task img/s ÷ 2-task img/s (step, and step + data); sets the row's
    ``ratio_to_2task`` and ``ratio_to_2task_with_data`` too."""
    out = []
    for r in rows:
        if r["model"] != "ours" or r["section"] != "cari":
            continue
        two = paired_2task(r, rows)
        if two is None:
            continue
        r["paired_2task_method"] = two["method"]
        r["ratio_to_2task"] = r["img_per_s"] / two["img_per_s"]
        r["ratio_to_2task_with_data"] = r["img_per_s_with_data"] / two["img_per_s_with_data"]
        out.append({"precision": r["precision"], "batch": r["batch"], "depth": r["depth"], "compile": r["compile"],
                    "method_3task": r["method"], "method_2task": two["method"],
                    "img_per_s_2task": two["img_per_s"], "img_per_s_3task": r["img_per_s"],
                    "ratio": r["ratio_to_2task"],
                    "img_per_s_with_data_2task": two["img_per_s_with_data"],
                    "img_per_s_with_data_3task": r["img_per_s_with_data"],
                    "ratio_with_data": r["ratio_to_2task_with_data"]})
    return out


def targets(rows: list[dict[str, Any]], tasks: int = 2) -> list[dict[str, Any]]:
    """The issue's two targets (reduced, dynamic, bf16, eager), where the rows exist; with ``tasks == 3`` also the
    3-task target (3-task ÷ 2-task dynamic at batch 256), ``value`` None and ``met`` "not measured" without its
    rows."""
    def find(model: str, method: str, depth: str, batch: int, section: str = "finetune") -> dict | None:
        return next((r for r in rows if r["model"] == model and r["method"] == method and r["depth"] == depth
                     and r["precision"] == "bf16" and r["batch"] == batch and not r["compile"]
                     and (model != "ours" or r["section"] == section)), None)

    out = []
    ours, peer = find("ours", "dynamic", "reduced", 512), find("facenet-pytorch", "single_identity", "full", 512)
    if ours and peer:
        ratio = ours["img_per_s"] / peer["img_per_s"]
        out.append({"target": "reduced dynamic bf16 b512 >= 2x peer (full single-task) img/s", "value": ratio,
                    "goal": 2.0, "met": ratio >= 2.0})
    ours = find("ours", "dynamic", "reduced", 90)
    if ours:
        out.append({"target": "reduced dynamic bf16 b90 >= 4000 img/s", "value": ours["img_per_s"], "goal": 4000.0,
                    "met": ours["img_per_s"] >= 4000.0})
    if tasks == 3:
        name = (f"reduced 3-task dynamic bf16 b{TASKS3_BATCH} >= {TASKS3_GOAL}x 2-task dynamic img/s")
        three, two = (find("ours", "dynamic", "reduced", TASKS3_BATCH, "cari"),
                      find("ours", "dynamic", "reduced", TASKS3_BATCH))
        if three and two:
            ratio = three["img_per_s"] / two["img_per_s"]
            out.append({"target": name, "value": ratio, "goal": TASKS3_GOAL, "met": ratio >= TASKS3_GOAL})
        else:
            out.append({"target": name, "value": None, "goal": TASKS3_GOAL, "met": "not measured",
                        "why": f"no bf16 batch-{TASKS3_BATCH} reduced dynamic rows of both task counts "
                               "(bf16 runs on CUDA only)"})
    return out


def cari_settings(c: StageSettings, methods: list[str], n_classes: dict[str, int]) -> dict[str, Any]:
    """The 3-task rows' settings for the JSON: ``cari.common``, the task set after the center policy, the method
    blocks (``variant: auto`` resolved), what ``auto`` followed, the classes and the pool's modality mask."""
    return {"cari.common": plain_settings(c.common), "task_set_name": c.common.task_set,
            "task_set": plain_settings(c.tasks), "center_policy": plain_settings(c.common.centers),
            "methods": methods,
            "method_blocks": {m: dict(zip(("weighting", "options"), c.method(m), strict=True)) for m in methods},
            "auto_variant": c.auto_variant, "auto_variant_reader": c.auto_reader, "n_classes": n_classes,
            "paired_2task": {m: PAIRED_2TASK.get(m, m) for m in methods},
            "modality_mask": "pool images 0, 2, 4… photos, 1, 3, 5… caricatures; identity_photos / "
                             "identity_caricatures tasks labelled on their modality only (-1 elsewhere)"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda if available)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="default 90 512; with --tasks 3: 256 (--quick: 8)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="bf16 = bf16 autocast (CUDA only; skipped elsewhere)")
    ap.add_argument("--depths", nargs="+", choices=["reduced", "full"], default=None,
                    help="default reduced full (--quick: reduced)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="the params file whose finetune.common, task set and methods are benchmarked")
    ap.add_argument("--methods", nargs="+", default=["dynamic", "single_identity"],
                    help="methods of finetune.methods, or weighting names (the 2-task rows)")
    ap.add_argument("--tasks", type=int, choices=[2, 3], default=2,
                    help="3: add the caricature model's 3-task step (cari.common, its task set, cari.methods) beside "
                         "the 2-task one, and the 3-task ÷ 2-task img/s ratios")
    ap.add_argument("--cari-methods", nargs="+", default=["dynamic", "single_verif"],
                    help="methods of cari.methods, or weighting names (the 3-task rows, with --tasks 3)")
    ap.add_argument("--cari-identities", type=int, default=195,
                    help="classes of the caricature set's identity tasks (verif, visual, cari; the original CaVI "
                         "run: 195)")
    ap.add_argument("--input-size", type=int, default=None,
                    help="model input side, the crop is resized to it (default 160; --quick: 96)")
    ap.add_argument("--identities", type=int, default=80,
                    help="classes of the tasks labelled by a manifest column (Oulu-CASIA: 80 subjects)")
    ap.add_argument("--classes", type=int, default=6,
                    help="classes of the tasks labelled by a label set (Oulu-CASIA Six: 6 expressions)")
    ap.add_argument("--pool", type=int, default=None,
                    help="uint8 images resident on the device (default 1440 as Oulu-CASIA; at least 2 batches)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per configuration, median reported (default 15; --quick: 2)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps before (default 3; --quick: 1; compiled rows: at least 3)")
    ap.add_argument("--compile", action="store_true",
                    help="add compiled rows (ours: finetune.runtime.compile; peer: model.compile())")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last model and input on CUDA (the stage's default)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (stage: off)")
    ap.add_argument("--facenet-path", type=Path, default=None,
                    help="folder holding the facenet_pytorch package (default: sys.path)")
    ap.add_argument("--no-peer", action="store_true", help="skip the facenet-pytorch rows")
    ap.add_argument("--peer-optimizer", choices=["adam", "rmsprop"], default="adam",
                    help="torch optimiser of the peer (facenet-pytorch's example: Adam, lr 1e-3)")
    ap.add_argument("--peer-lr", type=float, default=1e-3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (H100 SXM: 989)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget for the configurations (default 200 on CUDA, 900 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--commit", default=None, help="record this commit (e.g. on a copy without .git)")
    ap.add_argument("--quick", action="store_true", help="smoke run: the --quick defaults above")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default reports/bench/train-<device>.json)")
    args = ap.parse_args(argv)
    defaults = {"batch_sizes": [TASKS3_BATCH] if args.tasks == 3 else [90, 512], "depths": ["reduced", "full"],
                "input_size": 160, "steps": 15, "warmup": 3, "pool": 1440}
    if args.quick:
        defaults.update(batch_sizes=[8], depths=["reduced"], input_size=96, steps=2, warmup=1, pool=0)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    warmup = max(args.warmup, 3) if args.compile else args.warmup
    max_seconds = args.max_seconds if args.max_seconds is not None else (200.0 if on_cuda else 900.0)
    out = args.out or Path(f"reports/bench/train-{device.type}.json")
    s = StageSettings.read(args.params)
    sections = {"finetune": s}
    if args.tasks == 3:
        try:
            sections["cari"] = StageSettings.read_cari(args.params)
        except ValueError as exc:
            ap.error(str(exc))
    seed, crop = s.common.seed, s.common.crop
    n_classes = {"finetune": s.n_classes(args.identities, args.classes)}
    if "cari" in sections:
        n_classes["cari"] = sections["cari"].n_classes(args.cari_identities, args.classes)
    channels_last = args.channels_last and on_cuda

    t_all = time.perf_counter()
    load_start = loadavg()
    prep_note = ensure_preprocess()
    irv1, peer_note = (None, "not requested (--no-peer)") if args.no_peer else load_facenet_irv1(args.facenet_path)
    print(f"preprocess: {prep_note}\npeer: {peer_note}", flush=True)

    skipped: list[dict[str, Any]] = []
    precisions = []
    for p in args.precisions:
        if p == "bf16" and not on_cuda:
            skipped.append({"config": "all bf16 rows", "why": "bf16 autocast runs on CUDA only (TrainStep.amp)"})
        else:
            precisions.append(p)

    gen = torch.Generator(device=device).manual_seed(seed)
    n_pool = max(args.pool, 2 * max(args.batch_sizes))
    images = torch.randint(0, 256, (n_pool, 3, STORED_SIZE, STORED_SIZE), generator=gen, device=device,
                           dtype=torch.uint8)
    # one uint8 pool; each section's labels (the caricature set's with its modality mask: pool_labels)
    pools = {name: LabelledImages(images, pool_labels(sec.tasks, n_classes[name], n_pool, gen, device),
                                  [str(i) for i in range(n_pool)]) for name, sec in sections.items()}
    prep_kw = {"crop": crop.size, "input_size": args.input_size, "train": True, "random_crop": crop.random,
               "flip": crop.flip, "channels_last": channels_last}

    rows: list[dict[str, Any]] = []
    flops: dict[tuple, float] = {}
    deadline = time.perf_counter() + max_seconds
    for cfg in configs(args, precisions, irv1 is not None, sections):
        if time.perf_counter() > deadline:
            skipped.append({"config": cfg.label(), "why": "time budget (--max-seconds)"})
            continue
        amp = cfg.precision == "bf16"
        if cfg.model == "ours":
            def make(cfg=cfg, amp=amp):
                return build_ours(cfg.method, cfg.depth, args.input_size, n_classes[cfg.section], device, amp=amp,
                                  channels_last=channels_last, s=sections[cfg.section], compile=cfg.compile)
        else:
            def make(amp=amp):
                return build_peer(irv1, args.identities, device, amp=amp, channels_last=channels_last,
                                  optimizer=args.peer_optimizer, lr=args.peer_lr, seed=seed)
        try:
            row = run_config(cfg, make, pools[cfg.section or "finetune"], prep_kw, device, warmup, args.steps, seed,
                             flops)
        except torch.cuda.OutOfMemoryError as exc:
            skipped.append({"config": cfg.label(), "why": f"CUDA out of memory: {exc}"[:200]})
        except NonFiniteError as exc:
            skipped.append({"config": cfg.label(), "why": str(exc)[:300]})
        else:
            rows.append(row)
            print(f"  {cfg.label():52s} {row['img_per_s']:9.1f} img/s  {row['ms_per_step']:8.1f} ms/step  "
                  f"with data {row['img_per_s_with_data']:9.1f} img/s  peak {row['peak_mib'] or '-'} MiB", flush=True)
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    add_derived(rows, args.peak_tflops)
    ratios = task_ratios(rows)
    goals = targets(rows, args.tasks)
    print(f"\nTrainStep on {device} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, input {args.input_size} (crop {crop.size} of {STORED_SIZE}), "
          f"channels_last {channels_last}, {warmup} warm-up + {args.steps} timed steps\n")
    columns = ["model", "tasks", "method", "depth", "precision", "batch", "compile", "img_per_s", "ms_per_step",
               "img_per_s_with_data", "preprocess_img_per_s", "peak_mib", "gflop_per_img", "tflops", "pct_of_peak",
               "ratio_to_peer"] + (["ratio_to_2task"] if args.tasks == 3 else [])
    print_results(rows, columns, [{**g, "value": "-" if g["value"] is None else g["value"]} for g in goals], skipped)
    if args.tasks == 3:
        print("\n3-task img/s ÷ 2-task img/s (same precision, batch, depth, compile; paired methods)")
        if ratios:
            print_table(ratios, ["precision", "batch", "depth", "compile", "method_3task", "method_2task",
                                 "img_per_s_2task", "img_per_s_3task", "ratio", "ratio_with_data"])
        else:
            print("  none: no 3-task row has a 2-task pair in this run")
    info = run_info(args.commit)
    payload = {
        "benchmark": "train",
        "machine": info,
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda if on_cuda else None,
                     "cudnn": torch.backends.cudnn.version() if on_cuda else None},
        "device": str(device),
        "device_name": device_name(device),
        "gpu": ({"capability": list(torch.cuda.get_device_capability(device)),
                 "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
                if on_cuda else None),
        "torch_threads": torch.get_num_threads(),
        "settings": {"params": str(args.params), "finetune.common": plain_settings(s.common),
                     "task_set": plain_settings(s.tasks),
                     "stored_size": STORED_SIZE, "input_size": args.input_size, "batch_sizes": args.batch_sizes,
                     "precisions": args.precisions, "depths": args.depths, "methods": args.methods,
                     "method_blocks": {m: dict(zip(("weighting", "options"), s.method(m), strict=True))
                                       for m in args.methods},
                     "n_classes": n_classes["finetune"], "pool": n_pool, "tasks": args.tasks,
                     "steps": args.steps, "warmup": warmup, "compile": args.compile, "channels_last": channels_last,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "peer_optimizer": args.peer_optimizer, "peer_lr": args.peer_lr,
                     "peak_tflops": args.peak_tflops, "max_seconds": max_seconds, "quick": args.quick,
                     **({"cari": cari_settings(sections["cari"], args.cari_methods, n_classes["cari"])}
                        if "cari" in sections else {})},
        "preprocess_source": prep_note,
        "facenet_pytorch": peer_note,
        "results": rows,
        "task_ratios": ratios,
        "targets": goals,
        "skipped": skipped,
        "loadavg_1_5_15": {"start": load_start, "end": loadavg()},
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    write_json(out, payload)
    return payload


if __name__ == "__main__":
    main()
