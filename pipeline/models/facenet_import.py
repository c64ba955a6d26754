"""Import a facenet-pytorch ``InceptionResnetV1`` state dict into the trunk + identity branch of our model.

The public face-recognition checkpoints that still exist (VGGFace2 and CASIA-WebFace, as distributed with
facenet-pytorch) are ``state_dict`` files of that class. Its layers are FaceNet's full depth (5 × Block35,
10 × Block17, 5 × Block8 + the final Block8), so they map onto ``depth: full``:

============================  ===========================================
facenet-pytorch               ours
============================  ===========================================
``conv2d_1a`` … ``mixed_7a``  ``trunk.*`` (132 conv layers in both, same order and shapes;
                              the first 120 in the trunk)
``repeat_3``, ``block8``      ``branches.<first task>.repeat_2``, ``.block8``
``last_linear``, ``last_bn``  not imported: our identity branch has no 512-d bottleneck (docs/method.md §1.3)
``logits``                    not imported: a new identity head is trained for the new identities
============================  ===========================================

The mapping walks both models' convolutions in registration order and checks every shape; it never relies on
parameter names beyond facenet-pytorch's ``.conv`` / ``.bn`` pairing.

**BatchNorm scale.** facenet-pytorch's BN has a learned scale γ; ours has none (docs/method.md §1.1: TF-slim
``scale=False``). γ is *folded into the moving statistics* (and, where negative, into the sign of the conv):
with facenet's ``γ, β, μ, σ²`` and the shared ``eps = 1e-3``,

    conv' = sign(γ) · conv,   μ' = sign(γ) · μ,   σ'² = (σ² + eps) / γ² − eps,   β' = β,

so that ``(conv'·x − μ') / √(σ'² + eps) + β' = γ (conv·x − μ) / √(σ² + eps) + β`` exactly. The import is
therefore exact wherever BN uses its moving statistics: evaluation, and fine-tuning with
``freeze_pretrained_bn: true`` (the default, and the original's). A BN that trains on batch statistics forgets γ
(its output is re-standardised per batch, as every BN of the original is). ``σ'²`` may be negative where
``γ² > 1 + σ²/eps``; ``σ'² + eps`` is always positive, which is all BN uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.models.blocks import BN_EPS, ConvUnit
from pipeline.models.checkpoint import CheckpointError, load_file
from pipeline.models.network import MultiTaskInceptionResNetV1

__all__ = ["FACENET_EPS", "FacenetImport", "facenet_units", "import_facenet", "is_facenet_state_dict",
           "read_facenet_state_dict"]

#: facenet-pytorch's BatchNorm eps ("value found in tensorflow"): the same as ours
FACENET_EPS = 1e-3
#: keys of the bottleneck and classifier, which have no counterpart in our model
_NOT_IMPORTED = ("last_linear.", "last_bn.", "logits.")


@dataclass(frozen=True)
class FacenetImport:
    """What an import did.

    Attributes:
        convs: conv layers copied (132 for the full model).
        batch_norms: BN layers folded.
        negative_scales: BN channels whose γ was negative (folded into the sign of their conv filter).
        skipped: facenet keys that were not imported (bottleneck, classifier, BN batch counters).
    """

    convs: int
    batch_norms: int
    negative_scales: int
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class _Unit:
    """One conv of the facenet state dict: the key of its weight, and the key prefix of its BN or the key of its
    bias (the other is None)."""

    weight: str
    bn: str | None
    bias: str | None


def is_facenet_state_dict(state: Mapping[str, object]) -> bool:
    """True for a mapping that looks like facenet-pytorch's ``InceptionResnetV1.state_dict()``."""
    return "conv2d_1a.conv.weight" in state and "mixed_7a.branch0.0.conv.weight" in state


def facenet_units(state: Mapping[str, torch.Tensor]) -> list[_Unit]:
    """The conv layers of a facenet state dict in registration order (its key order), each with its BN or bias."""
    units = []
    for key, value in state.items():
        if not key.endswith(".weight") or key.startswith(_NOT_IMPORTED) or getattr(value, "ndim", 0) != 4:
            continue
        if key.endswith(".conv.weight"):
            units.append(_Unit(key, key[: -len("conv.weight")] + "bn.", None))
        else:
            units.append(_Unit(key, None, key[: -len("weight")] + "bias"))
    return units


def _our_units(model: MultiTaskInceptionResNetV1) -> list[tuple[nn.Conv2d, nn.Module | None]]:
    """Our trunk + identity-branch convs in registration order, each with its BN (None for the biased up-convs)."""
    identity = model.branches[model.task_names[0]]
    units: list[tuple[nn.Conv2d, nn.Module | None]] = []
    for part in (model.trunk, identity.repeat_2, identity.block8):
        for m in part.modules():
            if isinstance(m, ConvUnit):
                units.append((m[0], m[1]))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                units.append((m, None))
    return units


def read_facenet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a facenet-pytorch state-dict file (tensors only, ``weights_only``).

    Raises:
        CheckpointError: missing or unreadable file, or not a facenet-pytorch ``InceptionResnetV1`` state dict.
    """
    state = load_file(path, name="facenet-pytorch checkpoint", expected="a readable PyTorch file")
    if not isinstance(state, Mapping) or not is_facenet_state_dict(state):
        raise CheckpointError(f"{path}: not a facenet-pytorch InceptionResnetV1 state dict "
                              "(expected keys conv2d_1a.conv.weight, mixed_7a.branch0.0.conv.weight, ...)")
    return dict(state)


@torch.no_grad()
def import_facenet(state: Mapping[str, torch.Tensor], model: MultiTaskInceptionResNetV1,
                   source: str = "state dict") -> FacenetImport:
    """Copy a facenet-pytorch ``InceptionResnetV1`` state dict into ``model``'s trunk and first (identity) branch.

    Args:
        state: the facenet-pytorch state dict (see :func:`read_facenet_state_dict`).
        model: a ``depth: full`` model; its trunk and identity branch are overwritten (the identity head, other
            branches and every other parameter are left as they are; see :meth:`copy_branch` for docs/method.md §4.5).
        source: name used in error messages (the file).

    Raises:
        CheckpointError: ``model`` is not full depth; keys or shapes that do not match (one line, naming the first
            mismatch).
    """
    if model.config.network.depth != "full":
        raise CheckpointError(f"{source}: a facenet-pytorch InceptionResnetV1 has FaceNet's full depth (5/10/5 "
                              f"blocks): use depth 'full', not {model.config.network.depth!r}")
    if not is_facenet_state_dict(state):
        raise CheckpointError(f"{source}: not a facenet-pytorch InceptionResnetV1 state dict")
    theirs, ours = facenet_units(state), _our_units(model)
    if len(theirs) != len(ours):
        raise CheckpointError(f"{source}: {len(theirs)} conv layers where a full-depth InceptionResnetV1 has "
                              f"{len(ours)}")
    used: set[str] = set()
    negative = n_bn = 0
    for unit, (conv, bn) in zip(theirs, ours, strict=True):
        weight = _tensor(state, unit.weight, tuple(conv.weight.shape), source)
        used.add(unit.weight)
        if (unit.bn is None) != (bn is None):
            raise CheckpointError(f"{source}: {unit.weight}: conv/BN layout differs from ours at this layer")
        if unit.bias is not None:
            conv.weight.copy_(weight)
            conv.bias.copy_(_tensor(state, unit.bias, tuple(conv.bias.shape), source))
            used.add(unit.bias)
            continue
        shape = (conv.out_channels,)
        gamma, beta, mean, var = (_tensor(state, unit.bn + name, shape, source)
                                  for name in ("weight", "bias", "running_mean", "running_var"))
        used.update(unit.bn + name for name in ("weight", "bias", "running_mean", "running_var"))
        sign = torch.where(gamma < 0, -1.0, 1.0).to(weight.dtype)
        safe = torch.where(gamma == 0, torch.full_like(gamma, torch.finfo(gamma.dtype).tiny), gamma)
        conv.weight.copy_(weight * sign[:, None, None, None])
        bn.bias.copy_(beta)
        bn.running_mean.copy_(mean * sign)
        bn.running_var.copy_((var + FACENET_EPS) / safe.square() - BN_EPS)
        negative += int((gamma < 0).sum())
        n_bn += 1
    skipped = tuple(k for k in state if k not in used)
    return FacenetImport(convs=len(theirs), batch_norms=n_bn, negative_scales=negative, skipped=skipped)


def _tensor(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key}")
    value = state[key]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{source}: {key} has shape {got}, expected {shape}")
    return value.detach().to(torch.float32)
