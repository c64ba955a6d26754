"""Streaming training data for pretraining: faces read from the align stage's tar shards by worker processes.

Large identity datasets (CASIA-WebFace: 0.5 M faces, MS-Celeb-1M: 5–10 M) do not fit in memory, so pretraining
reads each batch from the shards on demand (one ``pread`` + one JPEG decode per face, in DataLoader worker
processes) instead of holding the set as ``uint8`` like fine-tuning does.

- :class:`ShardFaces`: a map-style dataset over ``(shard, offset, length, label)`` arrays. Its ``__getitems__``
  returns a whole batch as one ``uint8 [B, 3, S, S]`` tensor (one transfer per batch from a worker, not B).
  It needs only numpy, OpenCV and torch (no pandas), so ``bench/pretrain.py`` runs it on a bare GPU box.
- :class:`ShardBatchSampler`: the order. Every data epoch is a fresh seeded permutation (the original's
  uniform sampling, docs/method.md §4.2); ``window = k > 0`` instead shuffles shard order and mixes ``k`` shards at a
  time (shuffling across and within shards while each worker reads few files at once; for network file systems). The
  permutation of epoch ``e`` depends only on ``(seed, e)`` and global batch ``b`` takes positions
  ``[b·G, (b+1)·G)`` of it, so the data position of a run is its step counter: a resumed run restarts the sampler
  at its step and reads the same batches. Rank ``r`` of ``world`` takes slice ``r`` of each global batch, so the
  ranks read disjoint faces and together see exactly what one process with the global batch would see.
- :class:`ShardBytes`: the same faces left encoded: a worker sends a batch's JPEG/PNG bytes
  (:class:`EncodedBatch`, ~12 KB a face instead of 99 KB decoded) and the training process decodes them on its
  device (:func:`pipeline.training.shard_decode.decode_faces`: nvJPEG on CUDA), so no CPU core decodes
  (``pretrain.decode: device``).
- :func:`make_loader`: the DataLoader (workers, pinned memory on CUDA, prefetching).

Augmentation (random crop, flip) happens after batching, in the training process on the device, from a
generator seeded by the step (:mod:`pipeline.training.pretrain`), so it does not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.errors import DatasetError
from pipeline.faces.shards import ShardReader
from pipeline.processes import loader_worker_init

__all__ = ["DECODE_MODES", "EncodedBatch", "ShardBatchSampler", "ShardBytes", "ShardFaces", "check_decode",
           "make_loader", "next_batch"]

#: where the faces of a pretraining batch are decoded: in the loader's worker processes (OpenCV) or, after the
#: encoded bytes reach the training process, on its device (torchvision: nvJPEG on CUDA)
DECODE_MODES = ("worker", "device")


def check_decode(decode: str) -> None:
    """Raise ``ValueError`` (one line) unless ``decode`` is one of :data:`DECODE_MODES`."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")


class ShardFaces(Dataset):
    """Faces in tar shards, by position: item ``i`` is ``(uint8 [3, S, S], label)``.

    Args:
        shard_dir: the ``shards/`` folder of an align output.
        shard, offset, length: ``int64 [N]`` location of each face's encoded bytes (the alignment table's columns).
        labels: ``int64 [N]`` class of each face.
        crop_size: ``S``, the side of the stored crops (checked on every decode).
    """

    def __init__(self, shard_dir: str | Path, shard: np.ndarray, offset: np.ndarray, length: np.ndarray,
                 labels: np.ndarray, crop_size: int) -> None:
        arrays = [np.asarray(a, dtype=np.int64).reshape(-1) for a in (shard, offset, length, labels)]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"shard/offset/length/labels differ in length: {[len(a) for a in arrays]}")
        self.shard, self.offset, self.length, self.labels = arrays
        self.crop_size = int(crop_size)
        self.reader = ShardReader(Path(shard_dir))

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, i: int) -> np.ndarray:
        img = self.reader.read(int(self.shard[i]), int(self.offset[i]), int(self.length[i]))
        self.check_size(i, height=img.shape[0], width=img.shape[1])
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self._read(i)).permute(2, 0, 1).contiguous(), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch at once: ``(uint8 [B, 3, S, S], int64 [B])``."""
        s = self.crop_size
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = self._read(int(i))
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(self.labels[idx].copy())

    def location(self, i: int) -> str:
        """``<shard path> offset <n>``: where face ``i``'s bytes are (for error messages)."""
        return f"{self.reader.path(int(self.shard[i]))} offset {self.offset[i]}"

    def check_size(self, i: int, *, height: int, width: int) -> None:
        """Raise :class:`~pipeline.errors.DatasetError` (one line) when face ``i`` decoded to another size than
        ``crop_size``."""
        if (height, width) != (self.crop_size, self.crop_size):
            raise DatasetError(f"{self.location(i)}: a {width}x{height} crop, expected {self.crop_size}: re-run the "
                               "align stage")

    def encoded(self) -> ShardBytes:
        """The same faces as a dataset of encoded batches (decoded later, on the training device)."""
        return ShardBytes(self)

    def close(self) -> None:
        self.reader.close()


class EncodedBatch(NamedTuple):
    """A batch of faces still encoded, as :class:`ShardBytes` hands it from a worker to the training process.

    Attributes:
        data: ``uint8 [N]``: the encoded files (JPEG or PNG, as the align stage wrote them) one after another.
        offsets: ``int64 [B + 1]``: face ``k`` is ``data[offsets[k]:offsets[k + 1]]``.
        labels: ``int64 [B]``: the class of each face.
        index: ``int64 [B]``: each face's position in the dataset (error messages name its shard and offset).
    """

    data: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


class ShardBytes(Dataset):
    """The faces of a :class:`ShardFaces`, read but not decoded: ``__getitems__`` returns an :class:`EncodedBatch`.

    A worker then does one ``pread`` per face and no decoding, and sends ~the JPEG size per face through shared
    memory instead of ``3·S²`` bytes; :func:`pipeline.training.shard_decode.decode_faces` decodes the batch on the
    training device.
    """

    def __init__(self, faces: ShardFaces) -> None:
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitems__(self, indices: Sequence[int]) -> EncodedBatch:
        f = self.faces
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        parts = [f.reader.read_bytes(int(f.shard[i]), int(f.offset[i]), int(f.length[i])) for i in idx]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in parts], out=offsets[1:])
        joined = b"".join(parts)
        data = torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
        return EncodedBatch(data, torch.from_numpy(offsets), torch.from_numpy(f.labels[idx].copy()),
                            torch.from_numpy(idx))

    def __getitem__(self, i: int) -> EncodedBatch:
        return self.__getitems__([i])

    def close(self) -> None:
        self.faces.close()


class ShardBatchSampler(Sampler[list[int]]):
    """This rank's part of each global batch, from global step ``start_step`` on (endless; see the module doc).

    Args:
        shard: ``int64 [N]`` shard of each face (used by ``window``).
        global_batch: faces per step over all ranks (a multiple of ``world``).
        seed: the order's seed.
        rank, world: this process and the number of processes.
        window: ``0`` = one uniform permutation per epoch; ``k`` = shuffled shard order, ``k`` shards mixed at a time.
        start_step: the first global step to yield (a resumed run's step counter).
    """

    def __init__(self, shard: np.ndarray, global_batch: int, *, seed: int, rank: int = 0, world: int = 1,
                 window: int = 0, start_step: int = 0) -> None:
        shard = np.asarray(shard, dtype=np.int64).reshape(-1)
        if global_batch < 1 or global_batch % world:
            raise ValueError(f"global batch {global_batch} must be a positive multiple of the {world} processes")
        if len(shard) < global_batch:
            raise ValueError(f"{len(shard)} training faces are fewer than one batch of {global_batch}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.shard = shard
        self.global_batch, self.seed, self.rank, self.world, self.window = global_batch, seed, rank, world, window
        self.local = global_batch // world
        self.start_step = start_step
        # faces of each shard (ascending), grouped once: an epoch's window shuffle then costs O(N), not O(N · windows)
        by_shard = np.argsort(shard, kind="stable")
        self._shard_ids, starts = np.unique(shard[by_shard], return_index=True)
        self._members = dict(zip(self._shard_ids.tolist(), np.split(by_shard, starts[1:]), strict=True))

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per data epoch (the last partial batch of a permutation is dropped)."""
        return len(self.shard) // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of data epoch ``epoch`` (0-based), ``int64 [N]``; the same on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.window == 0:
            return rng.permutation(len(self.shard))
        shards = rng.permutation(self._shard_ids)
        parts = []
        for k in range(0, len(shards), self.window):
            members = np.sort(np.concatenate([self._members[int(sh)] for sh in shards[k : k + self.window]]))
            parts.append(rng.permutation(members))
        return np.concatenate(parts)

    def batch(self, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """This rank's indices ``int64 [global_batch / world]`` of global step ``step`` (0-based)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        order = self.epoch_order(epoch) if order is None else order
        start = b * self.global_batch + self.rank * self.local
        return order[start : start + self.local]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        epoch, order = -1, None
        while True:
            e = step // self.batches_per_epoch
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            yield self.batch(step, order).tolist()
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless, the loop stops it
        return 2**62


#: what a loader yields: decoded faces and labels, or an encoded batch
Batch = tuple[torch.Tensor, torch.Tensor] | EncodedBatch


def _passthrough(batch: Batch) -> Batch:
    return batch


def make_loader(faces: ShardFaces, sampler: ShardBatchSampler, *, workers: int = 4, pin_memory: bool = False,
                prefetch: int = 4, decode: str = "worker") -> DataLoader:
    """Batches of ``faces`` in the sampler's order, read by ``workers`` processes (``0``: in this process).

    ``decode="worker"``: ``(uint8 [B, 3, S, S], int64 [B])``, decoded in the workers (in pinned memory when
    ``pin_memory``); ``decode="device"``: :class:`EncodedBatch` values from :meth:`ShardFaces.encoded`, never pinned
    (the device decoder copies the bytes itself). Workers stay alive between batches (``persistent_workers``) and die
    with this process, even when it is killed (:func:`pipeline.processes.loader_worker_init`).
    """
    check_decode(decode)
    on_device = decode == "device"
    kw = {"prefetch_factor": prefetch, "persistent_workers": True} if workers > 0 else {}
    return DataLoader(faces.encoded() if on_device else faces, batch_sampler=sampler, num_workers=workers,
                      collate_fn=_passthrough, pin_memory=pin_memory and not on_device,
                      worker_init_fn=loader_worker_init(), **kw)


def next_batch(batches: Iterator[Batch]) -> Batch:
    """``next(batches)``; a :class:`~pipeline.errors.DatasetError` raised in a worker process (a corrupt or truncated
    shard) comes back as the same one-line error, not as DataLoader's multi-line "Caught ... in DataLoader worker
    process" wrapper with the worker's traceback."""
    try:
        return next(batches)
    except DatasetError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        last = lines[-1] if lines else str(exc)
        prefix = f"{DatasetError.__module__}.{DatasetError.__qualname__}: "
        raise DatasetError(last.removeprefix(prefix)) from None
