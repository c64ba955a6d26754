"""P-Net, R-Net and O-Net of MTCNN (Zhang et al. 2016) in PyTorch, loadable from the ``mtcnn`` package's weights.

The layer layout follows the Keras models of the ``mtcnn`` package 1.0.0 (which feeds images in their natural
H×W orientation; facenet's ``detect_face`` feeds them transposed with transposed kernels, which is the same
function). TensorFlow's ``SAME`` max-pooling pads at the bottom/right first; :func:`_pool_same` does exactly
that. Before their fully connected layers, R-Net and O-Net flatten in (W, H, C) order, as the Keras models'
``Permute((2, 1, 3))`` + ``Flatten`` do.

Inputs are normalised images ``(x - 127.5) * 0.0078125`` in N×3×H×W float layout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PNet", "RNet", "ONet", "load_nets"]


def _pool_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Max-pool with TensorFlow ``SAME`` padding (extra padding at the bottom/right, with -inf).

    When SAME needs no padding before the data (every use in these nets), this is ``ceil_mode`` pooling, which
    avoids a padded copy; otherwise the input is padded explicitly.
    """
    h, w = x.shape[-2:]
    pads = []
    for n in (w, h):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    if pads[0] == 0 and pads[2] == 0:
        return F.max_pool2d(x, k, s, ceil_mode=True)
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → N×(W·H·C), the order of Keras' ``Permute((2, 1, 3))`` + ``Flatten`` on N×H×W×C."""
    return x.permute(0, 3, 2, 1).flatten(1)


class _Net(nn.Module):
    """Shared weight loading: Keras arrays in layer order → this module's parameters in registration order."""

    def load_keras(self, arrays: list[np.ndarray]) -> None:
        it = iter(arrays)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    kernel = torch.from_numpy(np.asarray(next(it), dtype=np.float32))  # kh, kw, in, out
                    module.weight.copy_(kernel.permute(3, 2, 0, 1))
                    module.bias.copy_(torch.from_numpy(np.asarray(next(it), dtype=np.float32)))
                elif isinstance(module, nn.Linear):
                    kernel = torch.from_numpy(np.asarray(next(it), dtype=np.float32))  # in, out
                    module.weight.copy_(kernel.T)
                    module.bias.copy_(torch.from_numpy(np.asarray(next(it), dtype=np.float32)))
                elif isinstance(module, nn.PReLU):
                    module.weight.copy_(torch.from_numpy(np.asarray(next(it), dtype=np.float32).reshape(-1)))
        if next(it, None) is not None:
            raise ValueError(f"{type(self).__name__}: more weight arrays than layers")


class PNet(_Net):
    """Proposal net, fully convolutional: N×3×H×W → (regression N×4×H'×W', face probability N×H'×W').

    H' = ceil((H - 2) / 2) - 4 (stride 2, 12×12 receptive field).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 4, 1)
        self.conv4_2 = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_1(x), torch.softmax(self.conv4_2(x), dim=1)[:, 1]


class RNet(_Net):
    """Refinement net: N×3×24×24 → (regression N×4, face probability N)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.fc4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.fc5_1 = nn.Linear(128, 4)
        self.fc5_2 = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.fc4(_flatten_whc(x)))
        return self.fc5_1(x), torch.softmax(self.fc5_2(x), dim=1)[:, 1]


class ONet(_Net):
    """Output net: N×3×48×48 → (regression N×4, landmarks N×10 as x1..x5, y1..y5 in box units, probability N)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.fc6_1 = nn.Linear(256, 4)
        self.fc6_2 = nn.Linear(256, 10)
        self.fc6_3 = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = _pool_same(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.fc5(_flatten_whc(x)))
        return self.fc6_1(x), self.fc6_2(x), torch.softmax(self.fc6_3(x), dim=1)[:, 1]


def load_nets(weights: dict[str, list[np.ndarray]]) -> tuple[PNet, RNet, ONet]:
    """The three nets in eval mode with the given Keras-ordered weights (see :mod:`pipeline.align.weights`)."""
    nets = PNet(), RNet(), ONet()
    for net, key in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        net.load_keras(weights[key])
        net.eval().requires_grad_(False)
    return nets
