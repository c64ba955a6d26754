"""Inception-ResNet-v1 building blocks with the original TF-slim conventions (docs/method.md §1.1).

- :class:`ConvUnit`: conv **without bias** → BatchNorm (``eps=1e-3``, PyTorch ``momentum=0.005`` = TF decay 0.995,
  **no scale**: a trainable β, γ fixed at 1) → ReLU.
- Every residual block ends with a 1×1 "up" conv **with bias** and no BN/activation:
  ``act(x + scale · up(concat(branches)))``.
- Stride-1 convs inside blocks are "SAME" (padding ``k // 2`` per axis); the stem and reduction layers marked
  VALID have no padding.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BN_EPS", "BN_MOMENTUM", "Block8", "Block17", "Block35", "ConvUnit", "ReductionA", "ReductionB",
           "ScalelessBatchNorm2d"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.005  # TF moving-average decay 0.995


class ScalelessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with a learned shift β only (TF-slim ``scale=False``): γ is a constant 1, not a parameter.

    Shapes: ``[B, C, H, W] → [B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))  # β
        # γ = 1 passed explicitly: CUDA's batch_norm backward fails with weight=None and a bias (torch 2.11)
        self.register_buffer("unit_scale", torch.ones(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.unit_scale, self.bias,
            use_batch, self.momentum, self.eps)


class ConvUnit(nn.Sequential):
    """conv (no bias) → BN (no scale) → ReLU. ``padding`` may be an int or a ``(ph, pw)`` pair.

    Shapes: ``[B, C_in, H, W] → [B, C_out, H', W']``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            ScalelessBatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


def _same(kernel: tuple[int, int]) -> tuple[int, int]:
    return kernel[0] // 2, kernel[1] // 2


class _Residual(nn.Module):
    """``act(x + scale · up(concat(branches(x))))``; subclasses define ``self.branches`` and ``self.up``."""

    branches: nn.ModuleList
    up: nn.Conv2d

    def __init__(self, scale: float, activation: bool) -> None:
        super().__init__()
        self.scale = scale
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([b(x) for b in self.branches], dim=1)
        out = x + self.scale * self.up(mixed)
        return torch.relu(out) if self.activation else out


class Block35(_Residual):
    """Inception-ResNet-A (``block35``), 17×17 grid: ``[B, C, H, W] → [B, C, H, W]`` (C = 256)."""

    def __init__(self, channels: int = 256, scale: float = 0.17, activation: bool = True) -> None:
        super().__init__(scale, activation)
        self.branches = nn.ModuleList([
            ConvUnit(channels, 32, 1),
            nn.Sequential(ConvUnit(channels, 32, 1), ConvUnit(32, 32, 3, padding=1)),
            nn.Sequential(ConvUnit(channels, 32, 1), ConvUnit(32, 32, 3, padding=1), ConvUnit(32, 32, 3, padding=1)),
        ])
        self.up = nn.Conv2d(96, channels, 1, bias=True)


class Block17(_Residual):
    """Inception-ResNet-B (``block17``), 8×8 grid: ``[B, C, H, W] → [B, C, H, W]`` (C = 896)."""

    def __init__(self, channels: int = 896, scale: float = 0.10, activation: bool = True) -> None:
        super().__init__(scale, activation)
        self.branches = nn.ModuleList([
            ConvUnit(channels, 128, 1),
            nn.Sequential(ConvUnit(channels, 128, 1), ConvUnit(128, 128, (1, 7), padding=_same((1, 7))),
                          ConvUnit(128, 128, (7, 1), padding=_same((7, 1)))),
        ])
        self.up = nn.Conv2d(256, channels, 1, bias=True)


class Block8(_Residual):
    """Inception-ResNet-C (``block8``), 3×3 grid: ``[B, C, H, W] → [B, C, H, W]`` (C = 1792)."""

    def __init__(self, channels: int = 1792, scale: float = 0.20, activation: bool = True) -> None:
        super().__init__(scale, activation)
        self.branches = nn.ModuleList([
            ConvUnit(channels, 192, 1),
            nn.Sequential(ConvUnit(channels, 192, 1), ConvUnit(192, 192, (1, 3), padding=_same((1, 3))),
                          ConvUnit(192, 192, (3, 1), padding=_same((3, 1)))),
        ])
        self.up = nn.Conv2d(384, channels, 1, bias=True)


class ReductionA(nn.Module):
    """``Mixed_6a`` = reduction-A(k, l, m, n): ``[B, C, H, W] → [B, C + m + n, H', W']`` (256 → 896, 17 → 8)."""

    def __init__(self, c_in: int = 256, k: int = 192, l: int = 192, m: int = 256, n: int = 384) -> None:  # noqa: E741
        super().__init__()
        self.branch0 = ConvUnit(c_in, n, 3, stride=2)
        self.branch1 = nn.Sequential(ConvUnit(c_in, k, 1), ConvUnit(k, l, 3, padding=1), ConvUnit(l, m, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class ReductionB(nn.Module):
    """``Mixed_7a`` = reduction-B: ``[B, 896, 8, 8] → [B, 1792, 3, 3]`` (384 + 256 + 256 + 896 channels)."""

    def __init__(self, c_in: int = 896) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvUnit(c_in, 256, 1), ConvUnit(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvUnit(c_in, 256, 1), ConvUnit(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(ConvUnit(c_in, 256, 1), ConvUnit(256, 256, 3, padding=1),
                                     ConvUnit(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)
