"""The training settings model: every setting of pretraining and fine-tuning, declared once (standard library only).

``params.yaml`` ``pretrain`` and ``finetune`` are read into these frozen dataclasses; the training core, the stages
and the benchmarks all use them as they are (field names are the params keys: nothing is renamed on the way).
:mod:`pipeline.config` validates them with pydantic when a stage starts (types, the :class:`Bound` ranges, unknown
keys, each class's ``__post_init__`` checks); this module imports nothing outside the standard library, so the
training core still runs where only torch is installed (:func:`from_mapping` builds them from a plain mapping).

Defaults: a training setting has **no default in code**. ``params.yaml`` holds the one value of each setting (and
says beside it what the original code used), so a block with a missing key is an error naming it, never a silent
second default.

Shared sub-models (one declaration each, used by every training family):

- :class:`NetworkSettings` (``network``): depth, input size, dropout, BatchNorm decay;
- :class:`CropSettings` (``crop``): the crop of the stored faces, random crop and flip;
- :class:`OptimizerSettings` (``optimizer``, ``weights_optimizer``): the update rule and its hyper-parameters;
- :class:`ScheduleSettings` (``schedule``): the learning rate over time;
- :class:`CenterLossSettings` (a task's ``center`` and pretraining's ``center_loss`` extend it);
- :class:`ProtocolSettings` (``protocol``): the verification protocol of every evaluation;
- :class:`PrecisionSettings` (``precision``): bf16 autocast and channels-last on CUDA;
- :class:`RuntimeSettings` (``runtime``): device, threads, evaluation batch, ``torch.compile``: how a run computes,
  not what (DVC does not track them).

Families: :class:`TrainingSettings` holds what both families share; :class:`PretrainSettings` (``pretrain.train``)
and :class:`FinetuneSettings` (``finetune.common``) add their own fields. Task sets (``task_sets.<name>``,
:class:`TaskSetSettings`) say which tasks a multi-task model has, how each is labelled, headed, lossed and
evaluated.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Annotated, Any, Literal

__all__ = [
    "CENTER_FORMS", "DEVICE_PATTERN", "EVALUATIONS", "OPTIMIZERS", "OWN", "Bound", "CariSettings",
    "CenterLossSettings", "CenterPolicySettings", "DisjointSettings", "JointSamplingSettings", "TransferSettings",
    "CropSettings", "FinetuneSettings", "HeadSettings", "NetworkSettings", "OptimizerSettings", "PrecisionSettings",
    "PretrainCenterLossSettings", "PretrainRuntime", "PretrainSettings", "PretrainVerification", "ProtocolSettings",
    "RuntimeSettings", "ScheduleSettings", "TaskCenter", "TaskSetSettings", "TaskSettings", "TrainingSettings",
    "check_device", "from_mapping", "settings", "under_protocols",
]

#: optimiser names (:func:`pipeline.training.optim.build_optimizer`)
OptimizerName = Literal["rmsprop_tf1", "rmsprop", "adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)
#: forms of pretraining's center term (:class:`pipeline.losses.center.CenterLoss`)
CenterLossForm = Literal["metrics_loss", "facenet"]
CENTER_FORMS: tuple[str, ...] = typing.get_args(CenterLossForm)
#: evaluation kinds a task can have (:mod:`pipeline.training.evaluate`)
EvaluationKind = Literal["verification", "classification", "identification", "cross_modal"]
EVALUATIONS: tuple[str, ...] = typing.get_args(EvaluationKind)
#: in a task's ``center``: the task itself
OWN = "own"
#: ``auto``, ``cpu``, ``cuda`` or ``cuda:<n>``
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class Bound:
    """A numeric range on a field: ``Annotated[float, Bound(gt=0)]``.

    Checked by pydantic when params are validated (it turns into pydantic's own ``gt``/``ge``/``lt``/``le``
    constraints and messages); plain metadata otherwise.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        import annotated_types as at

        limits = {"gt": at.Gt, "ge": at.Ge, "lt": at.Lt, "le": at.Le}
        meta = [cls(getattr(self, name)) for name, cls in limits.items() if getattr(self, name) is not None]
        return handler(Annotated[(source, *meta)])  # type: ignore[valid-type]


#: pydantic reads this off a standard dataclass: unknown keys are errors
_FORBID_EXTRA = {"extra": "forbid"}

_T = typing.TypeVar("_T")


def settings(cls: type[_T]) -> type[_T]:
    """A settings class: a frozen, keyword-only dataclass whose unknown keys are params errors."""
    cls.__pydantic_config__ = _FORBID_EXTRA  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def check_device(value: str) -> str:
    """``value`` if it is a torch device name this project takes (``auto``, ``cpu``, ``cuda``, ``cuda:<n>``).

    Raises:
        ValueError: any other name.
    """
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<n>, not {value!r}")
    return value


def under_protocols(path: str) -> bool:
    """Whether ``path`` is a relative path under ``data/protocols/`` (the folder of protocol files that the stages
    reading them depend on)."""
    parts = PurePath(path).parts
    return not PurePath(path).is_absolute() and parts[:2] == ("data", "protocols") and ".." not in parts


def _protocols_path(value: str | None, key: str) -> None:
    """Files the training stages read must lie under ``data/protocols/`` (a dep of those stages)."""
    if value is not None and not under_protocols(value):
        raise ValueError(f"{key} {value!r} must lie under data/protocols/ (a relative path): the training stages "
                         "depend on that folder")


PositiveInt = Annotated[int, Bound(ge=1)]
Fraction = Annotated[float, Bound(gt=0.0, le=1.0)]


# ------------------------------------------------------------------------------------------- shared sub-models
@settings
class NetworkSettings:
    """``network``: the multi-task Inception-ResNet-v1 (:mod:`pipeline.models.network`).

    Attributes:
        depth: ``reduced`` (the original: 1/1/1 blocks) | ``full`` (FaceNet: 5/10/5).
        input_size: model input side; the crop is resized to it (the original: 160).
        keep_prob: dropout keep probability before the heads (TF convention; the original: 0.5).
        bn_decay: BatchNorm moving-average decay, PyTorch momentum ``1 − decay`` (the original: 0.995).
    """

    depth: Literal["reduced", "full"]
    input_size: Annotated[int, Bound(ge=75, le=512)]
    keep_prob: Fraction
    bn_decay: Annotated[float, Bound(ge=0.0, lt=1.0)]


@settings
class CropSettings:
    """``crop``: what is cut from the stored (aligned) faces.

    Attributes:
        size: side of the crop (random when training with ``random``, centred when evaluating).
        random: random crop positions when training (else the centre).
        flip: random left-right flips when training.
    """

    size: Annotated[int, Bound(ge=32, le=512)]
    random: bool
    flip: bool


@settings
class OptimizerSettings:
    """``optimizer`` (the network's) and ``weights_optimizer`` (a weighting strategy's own parameters).

    Attributes:
        name: ``rmsprop_tf1`` (the original, TF1 semantics) | ``rmsprop`` | ``adam`` | ``sgd``.
        momentum: RMSProp/SGD momentum.
        rms_decay: RMSProp's discount of the mean square.
        rms_eps: RMSProp epsilon (TF1: inside the square root).
        weight_decay: L2 coefficient added to the gradient.
        clip_norm: global-norm gradient clipping before each step (0 = off).
    """

    name: OptimizerName
    momentum: Annotated[float, Bound(ge=0.0, lt=1.0)]
    rms_decay: Annotated[float, Bound(gt=0.0, lt=1.0)]
    rms_eps: Annotated[float, Bound(gt=0.0)]
    weight_decay: Annotated[float, Bound(ge=0.0)]
    clip_norm: Annotated[float, Bound(ge=0.0)]


@settings
class ScheduleSettings:
    """``schedule``: the network's learning rate over time.

    ``lr × decay^k`` after ``k`` of the ``boundaries`` (steps when pretraining, 1-based epochs when fine-tuning),
    or, when ``file`` is set, the original's epoch-keyed schedule file (docs/method.md §5.6; fine-tuning only).

    Attributes:
        lr: the initial learning rate.
        boundaries: increasing steps (pretraining) or epochs (fine-tuning) where the rate is multiplied by ``decay``.
        decay: the factor applied at each boundary.
        file: a schedule file under ``data/protocols/`` used instead of ``lr``/``boundaries``, or None.
    """

    lr: Annotated[float, Bound(gt=0.0)]
    boundaries: list[PositiveInt]
    decay: Fraction
    file: str | None

    def __post_init__(self) -> None:
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries must be increasing, got {list(self.boundaries)}")
        if self.file is not None and self.boundaries:
            raise ValueError("file replaces lr and boundaries: leave boundaries empty when a schedule file is set")
        _protocols_path(self.file, "file")


@settings
class CenterLossSettings:
    """``center_loss``: the original's center loss (docs/method.md §2.2).

    Attributes:
        factor: λc, the weight of ``½‖e − c_y‖²`` in the loss (0 = none).
        alpha: the original's ``center_loss_alfa``: centers move ``1 − alpha`` of the way to the batch means.
    """

    factor: Annotated[float, Bound(ge=0.0)]
    alpha: Annotated[float, Bound(ge=0.0, le=1.0)]


@settings
class PretrainCenterLossSettings(CenterLossSettings):
    """``pretrain.train.center_loss``: :class:`CenterLossSettings` plus the form of the term.

    Attributes:
        form: ``metrics_loss`` (the original fine-tuning code's ``metrics_loss.center_loss``: ``½‖e − c_y‖²`` on the
            L2-normalised embeddings, centers move toward the batch means) | ``facenet`` (facenet's
            ``center_loss`` as its ``train_softmax.py`` pretrains: the mean over the batch and the 1792 dimensions of
            ``(f − c_y)²`` on the raw prelogits, one center update per sample, summed over a class's repeats);
            :mod:`pipeline.losses.center`.
    """

    form: CenterLossForm


@settings
class ProtocolSettings:
    """``protocol``: how verification accuracy, VAL@FAR and AUC are measured (docs/method.md §6.1–6.2).

    Attributes:
        mode: ``clean`` (all pairs, seeded shuffle) | ``faithful`` (the original: trailing pairs dropped).
        n_folds: folds of the 10-fold threshold protocol.
        far_targets: the FARs at which VAL is reported.
    """

    mode: Literal["clean", "faithful"]
    n_folds: Annotated[int, Bound(ge=2)]
    far_targets: list[Fraction]


@settings
class PrecisionSettings:
    """``precision`` (CUDA only; the CPU always runs float32, channels-first).

    Attributes:
        amp: bf16 autocast of the forward pass.
        channels_last: channels-last model and inputs.
    """

    amp: bool
    channels_last: bool


@settings
class RuntimeSettings:
    """``runtime``: how a run computes, not what (not tracked by DVC).

    ``device`` and ``compile`` may still change the arithmetic slightly on a GPU (other kernels, inductor's fused
    kernels); on the CPU results do not depend on them.

    Attributes:
        device: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:<n>``.
        threads: CPU threads of torch (0 = torch's default).
        eval_batch_size: images per evaluation batch.
        compile: ``torch.compile`` the training forward pass (pays off on CUDA; evaluation stays eager).
    """

    device: str
    threads: Annotated[int, Bound(ge=0)]
    eval_batch_size: PositiveInt
    compile: bool

    def __post_init__(self) -> None:
        check_device(self.device)


@settings
class PretrainRuntime(RuntimeSettings):
    """``pretrain.runtime``: :class:`RuntimeSettings` plus how the shards are read.

    Attributes:
        workers: DataLoader processes per training process reading the shards.
        decode: ``worker`` (OpenCV in those processes) | ``device`` (torchvision on the training device, nvJPEG on
            CUDA; the same pixels on the CPU).
    """

    workers: Annotated[int, Bound(ge=0, le=64)]
    decode: Literal["worker", "device"]


# ------------------------------------------------------------------------------------------- training families
@settings
class TrainingSettings:
    """What every training family shares.

    Attributes:
        init: ``random`` | a checkpoint path (ours, or a facenet-pytorch ``InceptionResnetV1`` state dict);
            fine-tuning also takes ``pretrain`` (the pretrain stage's ``model.pt``).
        network, crop, optimizer, schedule, protocol, precision: the shared sub-models.
        batch_size: images per step (pretraining: the global batch, split over the processes).
        seed: seed of the run's random numbers.
    """

    init: str
    network: NetworkSettings
    crop: CropSettings
    batch_size: PositiveInt
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    protocol: ProtocolSettings
    precision: PrecisionSettings
    seed: int


@settings
class PretrainVerification:
    """``pretrain.train.verification``: the pairs evaluated during pretraining (LFW protocol).

    Attributes:
        dataset: a dataset with fold settings (``folds.datasets``) whose pairs are evaluated.
        folds: its folds whose ``fold<k>-pairs.parquet`` are pooled.
    """

    dataset: str
    folds: list[Annotated[int, Bound(ge=0)]]

    def __post_init__(self) -> None:
        if not self.folds or len(set(self.folds)) != len(self.folds):
            raise ValueError(f"folds must be a non-empty list without repeats, got {list(self.folds)}")


@settings
class PretrainSettings(TrainingSettings):
    """``pretrain.train``: single-task identity pretraining (softmax + center loss; docs/method.md §4.5).

    Attributes:
        dataset: an aligned identity dataset (``datasets``).
        processes: training processes (> 1: DDP under torchrun; BatchNorm statistics are per process, so this
            changes the result and is tracked).
        steps: optimiser steps in all.
        freeze_bn: BatchNorm uses its moving statistics while training.
        center_loss: the center loss of the identity branch (its ``form`` says on which features).
        shuffle_window: data order: 0 = a uniform permutation per epoch; k = shuffled shards, k mixed at a time.
        checkpoint_every, eval_every, log_every: in steps.
        verification: the pairs verified every ``eval_every`` steps.
    """

    dataset: str
    processes: Annotated[int, Bound(ge=1, le=64)]
    steps: PositiveInt
    freeze_bn: bool
    center_loss: PretrainCenterLossSettings
    shuffle_window: Annotated[int, Bound(ge=0)]
    checkpoint_every: PositiveInt
    eval_every: PositiveInt
    log_every: PositiveInt
    verification: PretrainVerification

    def __post_init__(self) -> None:
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of processes {self.processes} "
                             "(it is the global batch, split evenly)")
        if self.schedule.file is not None:
            raise ValueError("schedule.file: schedule files are epoch-keyed (fine-tuning); pretraining uses "
                             "lr, boundaries (steps) and decay")


@settings
class FinetuneSettings(TrainingSettings):
    """``finetune.common``: what every (dataset, fold, method) fine-tuning run shares (docs/method.md §4).

    Attributes:
        task_set: the task set trained (``task_sets``).
        epoch_size: batches per epoch (the original: 100).
        epochs: epochs (a method may override it; 0 there = evaluate the initial model only).
        weights_optimizer: the optimiser of a weighting strategy's own parameters (the dynamic unit: the
            original's TF1 RMSProp); its learning rate comes from the strategy.
        freeze_pretrained_bn: with a checkpoint init, the trunk's and the pretrained branch's BatchNorm use (and
            keep) their moving statistics (the original FR+FER; docs/method.md §4.3).
        pretrained_dropout: with a checkpoint init, dropout on the pretrained branch (the original: off).
        selection: best-epoch selection: ``test_fold`` (the original) | ``val_subjects`` | ``last``.
        val_fraction: share of training subjects held out for ``selection: val_subjects``.
    """

    task_set: str
    epoch_size: PositiveInt
    epochs: PositiveInt
    weights_optimizer: OptimizerSettings
    freeze_pretrained_bn: bool
    pretrained_dropout: bool
    selection: Literal["test_fold", "val_subjects", "last"]
    val_fraction: Annotated[float, Bound(gt=0.0, lt=1.0)]


@settings
class CenterPolicySettings:
    """``cari.common.centers``: which tasks of a caricature task set carry a center term, and how their matrices
    are shared (docs/method.md §2.2, §9.17, §9.18, §9.22). The policy rewrites the ``center`` blocks of the task set;
    the first task's block gives ``factor`` and ``alpha`` to every listed task.

    Attributes:
        policy: ``per_branch`` (each listed task owns a matrix its own batch means move) | ``shared_b1`` (the
            original: one matrix owned by the first task, moved only by its update; the other listed tasks pull
            their own embeddings to it).
        tasks: the tasks with a center term (the original code: all three; the paper: the verification task).
        rows: ``labels`` (a row per class) | ``train_ids`` (the original WebCaricature: as many rows as training
            identities; a label beyond them meets a zero center and moves nothing).
    """

    policy: Literal["per_branch", "shared_b1"]
    tasks: list[str]
    rows: Literal["labels", "train_ids"]

    def __post_init__(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: a non-empty list without repeats, got {list(self.tasks)}")


# ------------------------------------------------------------------------------------------- task sets
@settings
class HeadSettings:
    """``head``: a task's classifier on its branch's 1792-d prelogits.

    Attributes:
        hidden: width of an FC + ReLU before the class FC (the original expression head: 128; 0 = none).
        relu_logits: pass the logits through a ReLU (the original expression/visual/caricature heads;
            docs/method.md §9.3).
    """

    hidden: Annotated[int, Bound(ge=0)]
    relu_logits: bool


@settings
class TaskCenter(CenterLossSettings):
    """A task's ``center``: :class:`CenterLossSettings` plus which embedding and which center matrix.

    Attributes:
        embedding: ``own`` (this task's branch) | a task name: whose L2-normalised prelogits are pulled to the
            centers.
        matrix: ``own`` (a matrix of this task's classes) | a task name: share that task's matrix (the caricature
            original's one matrix for three branches, docs/method.md §2.2).
        updates: this task's batch means move the matrix (the caricature original: only the verification task's).
        (``alpha`` is read from the task that owns the matrix.)
    """

    embedding: str
    matrix: str
    updates: bool


@settings
class TaskSettings:
    """One task of a task set.

    Attributes:
        label: where the task's labels come from: a manifest column (``identity``) or the name of one of the
            dataset's label sets (``datasets.<d>.label_sets``; frame-level labels, :mod:`pipeline.data.label_sets`).
            ``-1``/missing = not labelled for this task.
        head: the classifier.
        loss: ``softmax`` (cross-entropy over the labelled samples of the batch).
        center: a center loss on top of the cross-entropy, or None.
        evaluation: what is measured on the test fold: ``verification`` (pair accuracy, VAL, AUC on this task's
            embeddings), ``classification`` (accuracy and confusion of this head), ``identification`` (Rank-1 and
            Rank-10 of this task's embeddings, each labelled test image a probe against the others). Empty = none.
    """

    label: str
    head: HeadSettings
    loss: Literal["softmax"]
    center: TaskCenter | None
    evaluation: list[EvaluationKind]

    def __post_init__(self) -> None:
        if len(set(self.evaluation)) != len(self.evaluation):
            raise ValueError(f"evaluation: repeated kind in {list(self.evaluation)}")


@settings
class TaskSetSettings:
    """``task_sets.<name>``: the tasks of one multi-task model, in loss order (the first is the pretrained one).

    Attributes:
        title: what the model does, in words: the heading of its results report.
        tasks: task name → :class:`TaskSettings`; one branch and head each.
        copy_branches: ``[source, target]`` pairs: with a checkpoint init, ``target``'s residual blocks start as
            copies of ``source``'s (docs/method.md §4.5 path A), in this order.
        train_images: which of a fold's training images are trained on: ``all`` = those labelled for every task,
            ``any`` = those labelled for at least one (a task without a label in a batch is masked).
    """

    title: str
    tasks: dict[str, TaskSettings]
    copy_branches: list[tuple[str, str]]
    train_images: Literal["all", "any"]

    def __post_init__(self) -> None:
        names = list(self.tasks)
        if not names:
            raise ValueError("tasks: a task set needs at least one task")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"tasks: name {name!r} must be lower-case letters, digits and '_' (it names "
                                 "metrics, columns and the single-task weighting single_<task>)")
        for name, task in self.tasks.items():
            if task.center is None:
                continue
            for key in ("embedding", "matrix"):
                ref = getattr(task.center, key)
                if ref != OWN and ref not in self.tasks:
                    raise ValueError(f"tasks.{name}.center.{key}: {ref!r} is neither 'own' nor a task of this set "
                                     f"({', '.join(names)})")
            owner = self.matrix_owner(name)
            if self.tasks[owner].center is None:
                raise ValueError(f"tasks.{name}.center.matrix: task {owner!r} has no center (its matrix does not "
                                 "exist)")
            if self.matrix_owner(owner) != owner:
                raise ValueError(f"tasks.{name}.center.matrix: {owner!r} shares another task's matrix; name the "
                                 "task that owns it")
        for kind in ("verification", "identification"):
            having = self.evaluated(kind)
            if len(having) > 1:
                raise ValueError(f"tasks: {kind} is the evaluation of one task at most (the fold has one pair set), "
                                 f"got {having}")
        for i, pair in enumerate(self.copy_branches):
            bad = [t for t in pair if t not in self.tasks]
            if bad or pair[0] == pair[1]:
                raise ValueError(f"copy_branches.{i}: {list(pair)} must name two different tasks of this set "
                                 f"({', '.join(names)})")

    @property
    def names(self) -> list[str]:
        """The task names in loss order."""
        return list(self.tasks)

    def matrix_owner(self, task: str) -> str:
        """The task whose center matrix ``task`` uses (``task`` itself for ``matrix: own``)."""
        center = self.tasks[task].center
        if center is None or center.matrix == OWN:
            return task
        return center.matrix

    def embedding_of(self, task: str) -> str:
        """The task whose branch's embeddings feed ``task``'s center term."""
        center = self.tasks[task].center
        return task if center is None or center.embedding == OWN else center.embedding

    def evaluated(self, kind: str) -> list[str]:
        """The tasks with evaluation ``kind``, in loss order."""
        return [n for n, t in self.tasks.items() if kind in t.evaluation]


@settings
class CariSettings(FinetuneSettings):
    """``cari.common``: :class:`FinetuneSettings` for the caricature runs, plus the center policy.

    Attributes:
        centers: :class:`CenterPolicySettings`.
    """

    centers: CenterPolicySettings

    def __post_init__(self) -> None:
        if self.selection == "val_subjects":
            raise ValueError("selection: val_subjects holds out training subjects, and CaVI's split is closed-set "
                             "(every test identity trains): use test_fold (the original's) or last")


# ------------------------------------------------------------------------------------------- disjoint datasets
#: the weight factors of pseudo labels (:mod:`pipeline.disjoint.pseudo_weights`)
PseudoFactor = Literal["confidence", "density", "distribution"]


@settings
class JointSamplingSettings:
    """``disjoint.common.joint``: how a joint batch is shared between the sources (docs/disjoint.md#sampling).

    Attributes:
        epoch: ``min`` (the original: an epoch is the minimum over sources of ``N_s // n_s`` batches) | ``fixed``
            (``epoch_size`` batches).
        ratios: ``proportional`` (the original: ``int(B · N_s / ΣN)`` images of source ``s``, the rest from the
            last) | ``temperature`` (shares ``∝ N_s^(1/temperature)``, at least one image each).
        temperature: the exponent's temperature of ``ratios: temperature`` (1 = proportional).
    """

    epoch: Literal["min", "fixed"]
    ratios: Literal["proportional", "temperature"]
    temperature: Annotated[float, Bound(gt=0.0)]


@settings
class TransferSettings:
    """``disjoint.common.transfer`` (a method's ``transfer`` overrides some keys): what a source's images learn for
    the tasks they have no label of, from a teacher (a frozen copy of the model; docs/disjoint.md#transfer).

    Attributes:
        kind: ``none`` (masked: no target) | ``distill`` (the teacher's softened outputs, SA-MTL's DML-LWF and
            "distilling") | ``pseudo`` (the teacher's argmax, weighted and selected; LEL-LTN, SA-MTL).
        temperature: ``T`` of the distilled targets ``softmax(z / T)``.
        softmax: ``row`` (each image's distribution) | ``matrix`` (the original: one softmax over the whole
            ``N × C`` matrix, rows sum to about ``1/N``).
        identity_transfer: what an identity task (a task evaluated by verification) learns on images of other
            subjects: ``logits`` (distilled identity logits) | ``none``; ``pseudo`` is refused (an expression-only
            subject is not an identity class).
        weights: the factors multiplied into a pseudo label's weight (subset of confidence, density,
            distribution; empty = every weight 1).
        selection: ``hard`` (keep ``w`` above the ``quantile``; target ``w · onehot``) | ``soft`` (``w · onehot +
            (1 − w) · distilled``: SA-MTL) | ``pure`` (``0.5 · onehot + 0.5 · distilled``: the original without
            weights).
        quantile: ``hard``: the share of pseudo labels below the threshold (the original's ``selection_threshold``).
        density_t: the distance quantile of the density factor (``density_t``).
        cluster_k: mixture components of the distribution factor (``cluster_k``).
        source_mass: the distribution factor's EMD: ``unit`` (a component as a unit point mass: the closed form) |
            ``component`` (its mixture weight as mass: the original's partial transport).
        first_refresh: the teacher of the first refresh: ``untrained`` (the initial model: the original's runs) |
            ``warmup`` (``warmup_epochs`` joint masked epochs first, the original's freezing branch).
        warmup_epochs: epochs of ``first_refresh: warmup``.
    """

    kind: Literal["none", "distill", "pseudo"]
    temperature: Annotated[float, Bound(gt=0.0)]
    softmax: Literal["row", "matrix"]
    identity_transfer: Literal["logits", "none", "pseudo"]
    weights: list[PseudoFactor]
    selection: Literal["hard", "soft", "pure"]
    quantile: Annotated[float, Bound(ge=0.0, lt=1.0)]
    density_t: Annotated[float, Bound(gt=0.0, lt=1.0)]
    cluster_k: PositiveInt
    source_mass: Literal["unit", "component"]
    first_refresh: Literal["untrained", "warmup"]
    warmup_epochs: Annotated[int, Bound(ge=0)]

    def __post_init__(self) -> None:
        if len(set(self.weights)) != len(self.weights):
            raise ValueError(f"weights: repeated factor in {list(self.weights)}")
        if self.identity_transfer == "pseudo":
            raise ValueError("identity_transfer: pseudo labels of identity on subject-disjoint data are not identity "
                             "classes (an expression-only subject is nobody of the identity source): use logits or "
                             "none")
        if self.first_refresh == "warmup" and self.warmup_epochs < 1:
            raise ValueError("warmup_epochs: first_refresh warmup needs at least 1 epoch")


@settings
class DisjointSettings(FinetuneSettings):
    """``disjoint.common``: :class:`FinetuneSettings` for the disjoint-datasets runs, plus how they sample, normalise
    and transfer (docs/disjoint.md).

    Attributes:
        joint: :class:`JointSamplingSettings`.
        normalise: the denominator of a task's loss on soft targets: ``rows`` (rows with a target: the original's
            Keras loss) | ``weights`` (their total weight).
        refresh_epochs: joint mode: the teacher is refreshed every this many epochs (alternating: every epoch).
        transfer: the methods' default :class:`TransferSettings`.
    """

    joint: JointSamplingSettings
    normalise: Literal["rows", "weights"]
    refresh_epochs: PositiveInt
    transfer: TransferSettings


# ------------------------------------------------------------------------------------------- plain construction
def from_mapping(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """Build the settings dataclass ``cls`` (nested ones too) from a plain mapping, without validation.

    For code that runs without pydantic (the benchmarks on a torch-only machine); stages validate params with
    :func:`pipeline.config.load_params` instead.

    Raises:
        ValueError: an unknown or a missing key (named by its dotted path).
    """
    return _build(cls, data, cls.__name__)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _build(typing.get_args(tp)[0], value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp, include_extras=True)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key")
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{where}.{sorted(missing)[0]}: missing")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    return value
