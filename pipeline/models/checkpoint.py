"""Model checkpoints that carry their own configuration, so they load without ``params.yaml``.

A checkpoint file (``torch.save``) holds::

    {"format": "dmtl-model/1", "config": ModelConfig.to_dict(), "model": state_dict, "meta": {...}}

``meta`` is free-form provenance (stage, method, fold, epoch, dataset, label names...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_file
from pipeline.models.network import ModelConfig, MultiTaskInceptionResNetV1

__all__ = ["FORMAT", "CheckpointError", "checked_checkpoint", "load_file", "load_model", "read_checkpoint",
           "save_model"]

FORMAT = "dmtl-model/1"


class CheckpointError(ValueError):
    """A file that is not a readable model checkpoint of this project."""


def save_model(model: MultiTaskInceptionResNetV1, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights on CPU, float32) with its config; atomic (temp file + rename)."""
    path = Path(path)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, "config": model.config.to_dict(), "model": state, "meta": meta or {}}, tmp)
    return path


def load_file(path: str | Path, *, name: str = "checkpoint",
              expected: str = "a model checkpoint of this project") -> Any:
    """``torch.load`` (``weights_only``, on CPU) of a file; :class:`CheckpointError` with one line when it is missing
    (``"<name> not found: <path>"``) or unreadable (``"<path> is not <expected> (torch.load: <error>)"``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{name} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the same user error
        raise CheckpointError(f"{path} is not {expected} (torch.load: {type(exc).__name__})") from None


def checked_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """``obj`` (a loaded file) if it is one of our checkpoints, else :class:`CheckpointError` naming ``path``."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a model checkpoint of this project (expected format {FORMAT!r})")
    return obj


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict; :class:`CheckpointError` with one line for a missing or foreign file."""
    return checked_checkpoint(load_file(path), path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultiTaskInceptionResNetV1, dict]:
    """Rebuild the model of a checkpoint; returns ``(model in eval mode, meta)``."""
    ckpt = read_checkpoint(path)
    model = MultiTaskInceptionResNetV1(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt.get("meta", {})
