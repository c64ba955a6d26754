"""What the training stages (``finetune``, ``pretrain``) share: the device choice and the key of a run's resumable
checkpoint folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

__all__ = ["CODE", "resolve_device", "work_key"]

#: code whose change invalidates a half-finished run's checkpoint
CODE = ["pipeline/models", "pipeline/training", "pipeline/weighting", "pipeline/losses", "pipeline/evaluation",
        "pipeline/faces/crops.py", "pipeline/faces/source.py"]
CODE_ROOT = Path(__file__).resolve().parents[1]


def resolve_device(name: str, key: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; an unavailable CUDA device is a user error naming ``key``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key} is {name!r} but CUDA is not available here: set it to auto or cpu")
    return name


def _digest(paths_: list[Path], base: Path | None = None) -> str:
    """sha256 over the files (names relative to ``base`` when given, so the key does not depend on the cwd)."""
    h = hashlib.sha256()
    for root in paths_:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(base) if base is not None else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def work_key(settings: dict[str, Any], inputs: list[Path]) -> str:
    """Key of a run's checkpoint folder: params + input files + training code."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(_digest(list(inputs)).encode())
    h.update(_digest([CODE_ROOT / c for c in CODE], base=CODE_ROOT).encode())
    return h.hexdigest()[:16]
