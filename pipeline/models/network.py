"""The multi-task Inception-ResNet-v1 of the paper (docs/method.md §1.2–1.4), general in the number of task branches.

A shared **trunk** runs from the 160×160 input to ``Mixed_7a`` (``[B, 1792, 3, 3]``). Each task has its own
**branch** on ``Mixed_7a``: ``n×block8`` (scale 0.2, ReLU) → ``Block8`` (scale 1.0, no activation) → global
average pool → dropout → 1792-d **prelogits**, then a **head**: an optional hidden FC with ReLU (the expression
head's 128) and the class FC, optionally followed by ReLU (the original's oddity on the expression, visual and
caricature heads, docs/method.md §9.3).

The first branch is the pretrained one by convention (the identity branch of FR+FER): its L2-normalised prelogits
are the model's **embeddings** used by ``embed``/``verify`` (docs/method.md §1.3, §9.21: no bottleneck layer); every
branch's own L2-normalised prelogits are available as :meth:`ModelOutput.embedding` (a task's center loss and
verification may use any branch's).

Depth (``ModelConfig.network.depth``):

- ``reduced`` (the original): 1×block35, Mixed_6a, 1×block17, Mixed_7a | per branch 1×block8 + Block8;
- ``full`` (FaceNet): 5×block35, Mixed_6a, 10×block17, Mixed_7a | per branch 5×block8 + Block8.

Shapes for a 160 input: stem ``[B, 256, 17, 17]`` → Mixed_6a ``[B, 896, 8, 8]`` → Mixed_7a ``[B, 1792, 3, 3]``.
Other input sizes work (the branch pool is global); the dynamic-weight unit's input size follows
(:meth:`MultiTaskInceptionResNetV1.feature_shape`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pipeline.models.blocks import Block8, Block17, Block35, ConvUnit, ReductionA, ReductionB
from pipeline.settings import CropSettings, HeadSettings, NetworkSettings

__all__ = ["DEPTHS", "FEATURES", "PLAIN_HEAD", "BranchOutput", "HeadSpec", "ModelConfig", "ModelOutput",
           "MultiTaskInceptionResNetV1", "count_parameters", "init_weights", "l2_normalize", "truncated_normal_"]

#: blocks per depth: (block35, block17, block8 per branch before the final Block8)
DEPTHS: dict[str, tuple[int, int, int]] = {"reduced": (1, 1, 1), "full": (5, 10, 5)}
FEATURES = 1792  #: channels of Mixed_7a and size of the prelogits
Depth = Literal["reduced", "full"]
#: a linear class FC on the prelogits: the identity heads (pretraining, FR+FER, facenet-pytorch's classifier)
PLAIN_HEAD = HeadSettings(hidden=0, relu_logits=False)


@dataclass(frozen=True)
class HeadSpec:
    """One task branch and its classifier.

    Attributes:
        name: task name (``identity``, ``expression``…); the first head of a model is the pretrained one.
        n_classes: outputs of the class FC.
        head: the classifier's settings (hidden FC width, ReLU on the logits).
    """

    name: str
    n_classes: int
    head: HeadSettings = PLAIN_HEAD


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: stored in every checkpoint.

    Attributes:
        heads: the task branches, the pretrained one first.
        network: depth, input size, dropout, BatchNorm decay (:class:`~pipeline.settings.NetworkSettings`; the
            original's 0.995 decay needs thousands of steps before the moving statistics, used in evaluation,
            forget their initial mean 0 / variance 1).
        align_convention: the alignment convention the model was trained on (``paper_182_44``…), for ``embed``.
        crop: the crop of the stored faces (its ``size`` is the evaluation's centre crop, resized to the input size).
        class_names: optional class names per head (``{"expression": ["Anger", …]}``).
    """

    heads: tuple[HeadSpec, ...]
    network: NetworkSettings
    align_convention: str
    crop: CropSettings
    class_names: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.network
        if n.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {n.depth!r}")
        if not self.heads:
            raise ValueError("a model needs at least one head")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        if not 0.0 < n.keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {n.keep_prob}")
        if not 0.0 <= n.bn_decay < 1.0:
            raise ValueError(f"bn_decay must be in [0, 1), got {n.bn_decay}")
        if n.input_size < 75:
            raise ValueError(f"input_size must be >= 75 (Mixed_7a needs a 1x1 grid), got {n.input_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config of a checkpoint (also the flat layout of checkpoints written before the settings model:
        ``depth``/``keep_prob``/``input_size``/``bn_decay``/``alignment``/``crop`` side, heads with
        ``hidden``/``relu_logits``)."""
        d = dict(d)
        if "network" not in d:  # the flat layout
            d["network"] = {"depth": d.pop("depth", "reduced"), "input_size": d.pop("input_size", 160),
                            "keep_prob": d.pop("keep_prob", 0.5), "bn_decay": d.pop("bn_decay", 0.995)}
            d["align_convention"] = d.pop("alignment", "paper_182_44")
            d["crop"] = {"size": d.pop("crop", 160), "random": True, "flip": False}
        heads = []
        for h in d["heads"]:
            h = dict(h)
            head = h.pop("head", None) or {"hidden": h.pop("hidden", None) or 0,
                                           "relu_logits": h.pop("relu_logits", False)}
            heads.append(HeadSpec(**h, head=HeadSettings(**head)))
        d["heads"] = tuple(heads)
        d["network"] = NetworkSettings(**d["network"])
        d["crop"] = CropSettings(**d["crop"])
        return cls(**d)

    @property
    def task_names(self) -> list[str]:
        return [h.name for h in self.heads]


@dataclass
class BranchOutput:
    """One branch's outputs. ``prelogits [B, 1792]``, ``logits [B, n_classes]``."""

    prelogits: torch.Tensor
    logits: torch.Tensor


@dataclass
class ModelOutput:
    """Outputs of a forward pass.

    Attributes:
        features: ``Mixed_7a``, ``[B, 1792, h, w]`` (3×3 for a 160 input): the dynamic-weight unit's input.
        branches: per task name, its :class:`BranchOutput`.
        embeddings: L2-normalised prelogits of the first branch, ``[B, 1792]``.
    """

    features: torch.Tensor
    branches: dict[str, BranchOutput]
    embeddings: torch.Tensor

    def logits(self, name: str) -> torch.Tensor:
        return self.branches[name].logits

    def embedding(self, name: str) -> torch.Tensor:
        """L2-normalised float32 prelogits of branch ``name``, ``[B, 1792]`` (the first branch's: ``embeddings``)."""
        if name == next(iter(self.branches)):
            return self.embeddings
        return l2_normalize(self.branches[name].prelogits.float())


def l2_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``x / sqrt(max(Σx², eps))`` along dim 1 (TF ``tf.nn.l2_normalize``). ``[B, D] → [B, D]``."""
    return x * torch.rsqrt(torch.clamp(x.pow(2).sum(dim=1, keepdim=True), min=eps))


class Trunk(nn.Sequential):
    """Input ``[B, 3, S, S]`` → ``Mixed_7a`` ``[B, 1792, h, w]`` (``S=160 → 3×3``)."""

    def __init__(self, depth: Depth) -> None:
        n35, n17, _ = DEPTHS[depth]
        super().__init__()
        self.add_module("conv2d_1a", ConvUnit(3, 32, 3, stride=2))
        self.add_module("conv2d_2a", ConvUnit(32, 32, 3))
        self.add_module("conv2d_2b", ConvUnit(32, 64, 3, padding=1))
        self.add_module("maxpool_3a", nn.MaxPool2d(3, stride=2))
        self.add_module("conv2d_3b", ConvUnit(64, 80, 1))
        self.add_module("conv2d_4a", ConvUnit(80, 192, 3))
        self.add_module("conv2d_4b", ConvUnit(192, 256, 3, stride=2))
        self.add_module("repeat", nn.Sequential(*[Block35(256, 0.17) for _ in range(n35)]))
        self.add_module("mixed_6a", ReductionA(256))
        self.add_module("repeat_1", nn.Sequential(*[Block17(896, 0.10) for _ in range(n17)]))
        self.add_module("mixed_7a", ReductionB(896))


class Branch(nn.Module):
    """``Mixed_7a [B, 1792, h, w]`` → prelogits ``[B, 1792]`` → logits ``[B, n_classes]``."""

    def __init__(self, spec: HeadSpec, depth: Depth, keep_prob: float) -> None:
        super().__init__()
        n8 = DEPTHS[depth][2]
        self.spec = spec
        self.repeat_2 = nn.Sequential(*[Block8(FEATURES, 0.20) for _ in range(n8)])
        self.block8 = Block8(FEATURES, 1.0, activation=False)
        self.dropout = nn.Dropout(1.0 - keep_prob)
        width = FEATURES
        if spec.head.hidden:
            self.hidden = nn.Linear(FEATURES, spec.head.hidden)
            width = spec.head.hidden
        else:
            self.hidden = None
        self.logits = nn.Linear(width, spec.n_classes)

    def blocks(self) -> list[nn.Module]:
        """The residual blocks (shared structure across branches: what a branch copy transfers)."""
        return [self.repeat_2, self.block8]

    def forward(self, x: torch.Tensor) -> BranchOutput:
        x = self.block8(self.repeat_2(x))
        pre = self.dropout(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        h = torch.relu(self.hidden(pre)) if self.hidden is not None else pre
        logits = self.logits(h)
        if self.spec.head.relu_logits:
            logits = torch.relu(logits)
        return BranchOutput(prelogits=pre, logits=logits)


class MultiTaskInceptionResNetV1(nn.Module):
    """Shared trunk + one branch per task (docs/method.md §1.3). See the module docstring for shapes.

    Args:
        config: depth, heads (identity first), dropout, input size.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        net = config.network
        self.trunk = Trunk(net.depth)
        self.branches = nn.ModuleDict({h.name: Branch(h, net.depth, net.keep_prob) for h in config.heads})
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = round(1.0 - net.bn_decay, 12)  # 0.995 -> exactly 0.005, not 0.0050000000000000044
        init_weights(self)

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of ``Mixed_7a`` for this model's input size (``(1792, 3, 3)`` at 160)."""
        s = self.config.network.input_size
        s = (s - 3) // 2 + 1  # 1a
        s = s - 2  # 2a
        s = (s - 3) // 2 + 1  # pool 3a
        s = s - 2  # 4a
        s = (s - 3) // 2 + 1  # 4b
        s = (s - 3) // 2 + 1  # 6a
        s = (s - 3) // 2 + 1  # 7a
        return FEATURES, s, s

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """``x [B, 3, S, S]`` (standardised) → :class:`ModelOutput`."""
        features = self.trunk(x)
        outs = {name: branch(features) for name, branch in self.branches.items()}
        first = outs[self.task_names[0]]
        return ModelOutput(features=features, branches=outs, embeddings=l2_normalize(first.prelogits.float()))

    def embed(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        """L2-normalised embeddings of one branch (no other branch is run; default: the first, the identity or
        verification branch): ``[B, 3, S, S] → [B, 1792]``.

        Raises:
            KeyError: ``branch`` is not a task of the model (the message lists them).
        """
        name = self.task_names[0] if branch is None else branch
        if name not in self.branches:
            raise KeyError(f"no branch {name!r}: the model's branches are {', '.join(self.task_names)}")
        return l2_normalize(self.branches[name](self.trunk(x)).prelogits.float())

    def copy_branch(self, source: str, target: str) -> None:
        """Copy the residual blocks of branch ``source`` into branch ``target`` (weights, β, BN statistics, up-conv
        biases; not the heads): docs/method.md §4.5 path A, expression branch initialised from the identity branch."""
        src, dst = self.branches[source], self.branches[target]
        with torch.no_grad():
            for a, b in zip(src.blocks(), dst.blocks(), strict=True):
                b.load_state_dict(a.state_dict())

    def set_phase(self, *, train: bool, frozen_bn: Iterable[str] = (), dropout_off: Iterable[str] = ()) -> None:
        """Training mode with the original's phase flags (docs/method.md §4.3).

        Args:
            train: overall mode (False = evaluation: every BN uses moving statistics, no dropout).
            frozen_bn: parts whose BN uses (and keeps) its moving statistics while training: ``trunk`` and/or
                task names. Their β is still trained.
            dropout_off: task names whose dropout is off while training.
        """
        self.train(train)
        if not train:
            return
        for part in frozen_bn:
            module = self.trunk if part == "trunk" else self.branches[part]
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        for name in dropout_off:
            self.branches[name].dropout.eval()

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last shared layer (``Mixed_7a``): GradNorm's ``W``."""
        return list(self.trunk.mixed_7a.parameters())


def truncated_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """TF ``truncated_normal_initializer(stddev=std)``: normal, redrawn outside ±2 std."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


def init_weights(model: nn.Module) -> None:
    """Spec §1.1: conv weights Xavier-uniform, biases 0, FC weights truncated-normal(0.1), FC biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            truncated_normal_(m.weight, 0.1)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
