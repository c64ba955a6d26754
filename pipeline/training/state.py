"""The resumable state of a training run: one ``state.pt`` file in the run's private folder, for every family.

A training loop names what it checkpoints, once, as a mapping ``{key: object}`` of objects with
``state_dict()`` / ``load_state_dict()`` (modules, optimisers, centers, samplers; ``None`` for one the run does not
have), plus plain values (counters, logged rows, selection) and, optionally, the random-number generators:

    state = TrainingState(work, "dmtl-finetune-state/2", "fine-tuning")
    st = state.load()                                   # None: nothing to resume
    if st is not None:
        state.restore(st, objects, rng=device)          # objects' states, then the RNGs
    ...
    state.save(objects, rng=device, epoch=epoch, rows=rows)   # atomic: a kill never leaves half a file

:func:`generator` and :func:`extra_state` adapt a ``torch.Generator`` and a weighting strategy's extra state to
that interface.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.atomic import atomic_file

__all__ = ["Stateful", "TrainingState", "extra_state", "generator"]

FILE = "state.pt"


class Stateful(Protocol):
    """What a checkpointed object provides (``torch.nn.Module``, ``torch.optim.Optimizer`` and ours)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class _Adapter:
    """``state_dict``/``load_state_dict`` over a getter and a setter."""

    def __init__(self, get, set_) -> None:
        self._get, self._set = get, set_

    def state_dict(self) -> Any:
        return self._get()

    def load_state_dict(self, state: Any) -> None:
        self._set(state)


def generator(gen: torch.Generator) -> Stateful:
    """A ``torch.Generator`` as a :class:`Stateful` (its ``get_state``/``set_state``)."""
    return _Adapter(gen.get_state, gen.set_state)


def extra_state(strategy) -> Stateful:
    """A weighting strategy's state outside its parameters (``extra_state``/``load_extra_state``)."""
    return _Adapter(strategy.extra_state, strategy.load_extra_state)


class TrainingState:
    """``<work>/state.pt`` of one run: tagged with ``fmt``, written atomically, checked on load.

    Args:
        work: the run's private folder (created on save).
        fmt: the format tag of this training family's files (a file with another tag is refused).
        what: the family in error messages ("pretraining", "fine-tuning").
    """

    def __init__(self, work: Path, fmt: str, what: str) -> None:
        self.work, self.fmt, self.what = Path(work), fmt, what
        self.path = self.work / FILE

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none.

        Raises:
            ValueError: the file is not a state of this family (names the folder to delete to start over).
        """
        if not self.path.is_file():
            return None
        st = torch.load(self.path, map_location="cpu", weights_only=False)
        if not isinstance(st, dict) or st.get("format") != self.fmt:
            raise ValueError(f"{self.path}: not a {self.what} state file; delete the folder {self.work} to start over")
        return st

    def restore(self, st: Mapping[str, Any], objects: Mapping[str, Stateful | None],
                rng: torch.device | None = None) -> None:
        """Load each present object's state from ``st`` (in ``objects``' order), then the RNGs when ``rng`` is the
        run's device (CPU, Python and NumPy generators, and the device's CUDA generator when it was saved)."""
        for key, obj in objects.items():
            if obj is not None:
                obj.load_state_dict(st[key])
        if rng is not None:
            torch.set_rng_state(st["rng_cpu"])
            if rng.type == "cuda" and st.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(st["rng_cuda"], rng)
            random.setstate(st["rng_python"])
            np.random.set_state(st["rng_numpy"])

    def save(self, objects: Mapping[str, Stateful | None], rng: torch.device | None = None, **values: Any) -> None:
        """Write the objects' states (``None`` for an absent one), the RNGs when ``rng`` is given, and ``values``."""
        state: dict[str, Any] = {"format": self.fmt, **values}
        state.update({key: obj.state_dict() if obj is not None else None for key, obj in objects.items()})
        if rng is not None:
            state.update(rng_cpu=torch.get_rng_state(),
                         rng_cuda=torch.cuda.get_rng_state(rng) if rng.type == "cuda" else None,
                         rng_python=random.getstate(), rng_numpy=np.random.get_state())
        with atomic_file(self.path) as tmp:
            torch.save(state, tmp)
