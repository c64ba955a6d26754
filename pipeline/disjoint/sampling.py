"""Batch samplers over T disjoint sources: joint batches (every batch mixes all sources) and alternating epochs.

The training images of all sources sit in one in-memory tensor; source ``s`` (``N_s`` images, one task labelled)
owns the contiguous global indices ``offset_s + [0, N_s)`` with ``offset_s = N_0 + … + N_{s-1}``
(:class:`SourceRanges`). The samplers hand out global indices; each source draws from its own seeded
:class:`~pipeline.training.data.PermutationStream` of local indices.

- :class:`JointSampler` (SA-MTL's joint scripts, ``Joint-MTL_scripts/CONFUSION_*``, generators in
  ``utils/confusion_MTL/confusion_*_generator.py``): every batch of ``B`` images takes ``n_s = int(B · N_s / ΣN)``
  images from each source but the last, which gets the remainder ``B − Σ n_s``; an epoch lasts
  ``min_s int(N_s / n_s)`` batches (the generator's ``__len__``), so the source whose share runs out first ends it.
  The original slices each dataset in file order (Keras shuffles only the order of the batches); here each source's
  share comes from its permutation stream instead, as in the rest of the project.
- :class:`AlternatingSampler` (``Alternative-MTL_scripts/ALTERNATIVE_*.py`` with
  ``utils/proposed_MTL/alternate_*_generator.py``): epoch ``e`` (1-based) trains on source ``(e − 1) mod T`` only,
  one pass over it in ``ceil(N_s / B)`` batches, the last one short (the generator's ``__len__``), i.e. one whole
  permutation of that source per epoch. Unlike the original, a last batch of one image joins the one before it
  (``B + 1`` images): BatchNorm in training mode cannot normalise a single image.

Per-source seeds: source ``s`` of a sampler seeded ``seed`` uses ``numpy.random.SeedSequence([seed, s])``'s first
63-bit word, so sources never share a stream and adding a source leaves the others' streams unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.training.data import PermutationStream

__all__ = ["AlternatingSampler", "JointSampler", "SourceRanges", "joint_counts", "source_seed"]

EPOCH_MODES = ("min", "fixed")
RATIO_MODES = ("proportional", "temperature")


def source_seed(seed: int, source: int) -> int:
    """Seed of source ``source``'s permutation stream in a sampler seeded ``seed`` (in ``[0, 2**63)``)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: {seed!r} must be a non-negative integer")
    word = np.random.SeedSequence([int(seed), int(source)]).generate_state(1, dtype=np.uint64)[0]
    return int(word) >> 1


@dataclass(frozen=True)
class SourceRanges:
    """Sizes and global index ranges of T sources stored back to back.

    Attributes:
        sizes: ``N_s`` per source, in order.
        offsets: ``offset_s = N_0 + … + N_{s-1}``; source ``s`` owns global indices ``[offset_s, offset_s + N_s)``.
    """

    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> SourceRanges:
        """Validated ranges for ``sizes`` (every ``N_s`` a positive integer; ValueError naming the source)."""
        sizes = tuple(sizes)
        if not sizes:
            raise ValueError("sizes: no sources given")
        for s, n in enumerate(sizes):
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
                raise ValueError(f"sizes: source {s} has {n!r} training images, needs a positive integer")
        offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
        return cls(tuple(int(n) for n in sizes), offsets)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        """``ΣN``, the number of images of all sources."""
        return sum(self.sizes)

    def bounds(self, source: int) -> tuple[int, int]:
        """``(start, stop)`` of source ``source``'s global indices."""
        return self.offsets[source], self.offsets[source] + self.sizes[source]

    def source_of(self, index: torch.Tensor) -> torch.Tensor:
        """Source of each global index: ``int64 [B]`` → ``int64 [B]`` (same device)."""
        stops = torch.tensor([o + n for o, n in zip(self.offsets, self.sizes, strict=True)], device=index.device)
        return torch.bucketize(index, stops, right=True)


def joint_counts(sizes: Sequence[int], batch_size: int, *, ratios: str = "proportional",
                 temperature: float = 1.0) -> tuple[int, ...]:
    """Images per source in one joint batch of ``batch_size``.

    ``proportional`` (the original): ``n_s = int(B · N_s / ΣN)`` for every source but the last, the last takes
    ``B − Σ n_s``. ``temperature``: the same rule with ``p_s ∝ N_s^(1/temperature)`` in place of ``N_s / ΣN``, and
    every source gets at least one image (taken from the source with the most when the floors overshoot); with
    ``temperature = 1`` it equals ``proportional`` whenever that gives every source an image.

    Raises:
        ValueError: ``proportional`` would give a source no image (the original then divides by zero in its epoch
            length): the batch is too small for that source's share; raise ``batch_size`` or use ``temperature``.
    """
    ranges = SourceRanges.from_sizes(sizes)
    t = len(ranges)
    if batch_size < t:
        raise ValueError(f"batch_size: {batch_size} is smaller than the number of sources ({t}); every joint batch "
                         "needs at least one image per source")
    if ratios not in RATIO_MODES:
        raise ValueError(f"ratios: {ratios!r} is not one of {', '.join(RATIO_MODES)}")
    if ratios == "proportional":
        total = ranges.total
        counts = [int(batch_size * (n / total)) for n in ranges.sizes[:-1]]
        counts.append(batch_size - sum(counts))
        for s, c in enumerate(counts):
            if c < 1:
                raise ValueError(f"batch_size: {batch_size} gives source {s} ({ranges.sizes[s]} of {total} images) no "
                                 "image per joint batch; raise batch_size or use ratios: temperature")
        return tuple(counts)
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: {temperature!r} must be a positive finite number")
    weights = np.asarray(ranges.sizes, dtype=np.float64) ** (1.0 / temperature)
    p = weights / weights.sum()
    counts = [max(1, int(batch_size * float(q))) for q in p[:-1]]
    counts.append(batch_size - sum(counts))
    while counts[-1] < 1:
        donor = max(range(t - 1), key=lambda s: counts[s])
        counts[donor] -= 1
        counts[-1] += 1
    return tuple(counts)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} must be a positive integer")


def _check_streams(state: dict, kind: str, sizes: tuple[int, ...]) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"sampler state is for a {state.get('kind')!r} sampler, this run uses a {kind!r} one")
    if tuple(state["sizes"]) != sizes:
        raise ValueError(f"sampler state is for source sizes {tuple(state['sizes'])}, this run has {sizes}")


class JointSampler:
    """Joint batches: each of ``B`` global indices, ``n_s`` from every source, sources in order within the batch.

    Args:
        sizes: ``N_s`` of the T sources, in storage order.
        batch_size: ``B`` (≥ T).
        seed: sampler seed; source ``s`` streams from :func:`source_seed` ``(seed, s)``.
        epoch: ``min`` (the original): ``steps_per_epoch = min_s N_s // n_s``; ``fixed``: ``fixed_steps``.
        ratios: ``proportional`` (the original) or ``temperature`` (see :func:`joint_counts`).
        temperature: exponent ``1/temperature`` on ``N_s`` for ``ratios: temperature`` (> 1 flattens the shares
            towards uniform, < 1 sharpens them); must stay 1 with ``proportional``.
        fixed_steps: batches per epoch with ``epoch: fixed`` (given only then).

    Attributes:
        ranges: the sources' :class:`SourceRanges`.
        counts: ``n_s`` per source, summing to ``B``.
        steps_per_epoch: batches per epoch.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, *, epoch: str = "min",
                 ratios: str = "proportional", temperature: float = 1.0, fixed_steps: int | None = None) -> None:
        self.ranges = SourceRanges.from_sizes(sizes)
        _check_batch_size(batch_size)
        if ratios == "proportional" and temperature != 1.0:
            raise ValueError(f"temperature: {temperature!r} has no effect with ratios: proportional; "
                             "use ratios: temperature")
        self.batch_size = int(batch_size)
        self.counts = joint_counts(self.ranges.sizes, self.batch_size, ratios=ratios, temperature=temperature)
        if epoch not in EPOCH_MODES:
            raise ValueError(f"epoch: {epoch!r} is not one of {', '.join(EPOCH_MODES)}")
        if epoch == "fixed":
            if isinstance(fixed_steps, bool) or not isinstance(fixed_steps, int | np.integer) or fixed_steps < 1:
                raise ValueError(f"fixed_steps: {fixed_steps!r} must be a positive integer with epoch: fixed")
            self.steps_per_epoch = int(fixed_steps)
        else:
            if fixed_steps is not None:
                raise ValueError("fixed_steps: given with epoch: min; use epoch: fixed")
            self.steps_per_epoch = min(n // c for n, c in zip(self.ranges.sizes, self.counts, strict=True))
            if self.steps_per_epoch < 1:
                s = min(range(len(self.counts)), key=lambda i: self.ranges.sizes[i] // self.counts[i])
                raise ValueError(f"batch_size: {batch_size} takes {self.counts[s]} images of source {s} per batch, "
                                 f"more than its {self.ranges.sizes[s]}; an epoch would have no batch")
        self.streams = [PermutationStream(n, source_seed(seed, s)) for s, n in enumerate(self.ranges.sizes)]

    def next(self) -> torch.Tensor:
        """The next batch of global indices, ``int64 [B]`` (CPU): ``n_0`` of source 0, then ``n_1`` of source 1, …"""
        return torch.cat([stream.next(c) + o
                          for stream, c, o in zip(self.streams, self.counts, self.ranges.offsets, strict=True)])

    def state_dict(self) -> dict:
        """Every source's stream state (generator, permutation, position), with the sizes and shares it is for."""
        return {"kind": "joint", "sizes": list(self.ranges.sizes), "counts": list(self.counts),
                "streams": [stream.state_dict() for stream in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` output: the next batches equal those the saved sampler would have drawn."""
        _check_streams(state, "joint", self.ranges.sizes)
        if tuple(state["counts"]) != self.counts:
            raise ValueError(f"sampler state is for per-source batch shares {tuple(state['counts'])}, "
                             f"this run has {self.counts}")
        for stream, stream_state in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)


class AlternatingSampler:
    """Alternating epochs: epoch ``e`` (1-based) is one pass over source ``(e − 1) mod T``.

    The pass takes ``ceil(N_s / B)`` batches: full ones of ``B`` and a last one of ``N_s − (steps − 1) · B``, all from
    one permutation of the source (its stream sits at a permutation boundary between passes as long as each epoch
    draws its :meth:`steps`). An interrupted pass goes on where it stopped after :meth:`load_state_dict`.

    Args:
        sizes: ``N_s`` of the T sources, in storage order.
        batch_size: ``B``.
        seed: sampler seed; source ``s`` streams from :func:`source_seed` ``(seed, s)``.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int) -> None:
        self.ranges = SourceRanges.from_sizes(sizes)
        _check_batch_size(batch_size)
        self.batch_size = int(batch_size)
        self.streams = [PermutationStream(n, source_seed(seed, s)) for s, n in enumerate(self.ranges.sizes)]

    def active_source(self, epoch: int) -> int:
        """Source trained in ``epoch`` (1-based): ``(epoch − 1) mod T``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 1:
            raise ValueError(f"epoch: {epoch!r} must be an integer ≥ 1 (epochs are 1-based)")
        return (int(epoch) - 1) % len(self.ranges)

    def steps(self, epoch: int) -> int:
        """Batches in ``epoch``: ``ceil(N_s / B)`` of its active source, one less when the remainder is a single image
        (it joins the previous batch: BatchNorm in training mode cannot normalise one image)."""
        q, r = divmod(self.ranges.sizes[self.active_source(epoch)], self.batch_size)
        return q + (r > 1) if q else 1

    def next(self, epoch: int) -> torch.Tensor:
        """The next batch of ``epoch``'s source as global indices, ``int64 [b]`` (CPU), ``b ≤ B``.

        ``b = B`` except for the pass's last batch, which takes what is left of the current permutation (``B + 1``
        when one image would be left alone).
        """
        s = self.active_source(epoch)
        stream = self.streams[s]
        left = stream.n - stream.pos if stream.pos < stream.n else stream.n
        take = left if left == self.batch_size + 1 else min(self.batch_size, left)
        return stream.next(take) + self.ranges.offsets[s]

    def state_dict(self) -> dict:
        """Every source's stream state (generator, permutation, position), with the sizes it is for."""
        return {"kind": "alternating", "sizes": list(self.ranges.sizes),
                "streams": [stream.state_dict() for stream in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` output: the next batches equal those the saved sampler would have drawn."""
        _check_streams(state, "alternating", self.ranges.sizes)
        for stream, stream_state in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)
