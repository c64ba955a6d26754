"""The one reader of aligned faces that training and evaluation use: :class:`FaceSource`.

A :class:`FaceSource` opens an alignment output folder (layout in :mod:`pipeline.faces.shards`)::

    <root>/alignment.parquet   one row per manifest image (pipeline.faces.table)
    <root>/shards/shard-XXXXX.tar

and exposes only the images that were aligned, in table order. Images that failed alignment (no face,
unreadable...) are not readable; :meth:`FaceSource.subset` drops them from a requested id list and counts them, so
downstream stages report how many images they lost.

Two ways to read, one per dataset scale:

* small datasets (CK+, Oulu-CASIA, the demo): :meth:`FaceSource.load_all` decodes every face into one
  ``uint8`` tensor ``[N, 3, H, W]`` on the GPU, and training indexes it;
* large ones (CASIA-WebFace, MS-Celeb-1M): :meth:`FaceSource.torch_dataset` reads faces on demand in DataLoader
  workers.

Faces are stored at the alignment size (182 px for the paper's 182/44 convention); training takes a random 160 px
crop and evaluation the centre one (:func:`random_crop`, :func:`center_crop`; docs/method.md §9.10, §9.31).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pipeline.errors import DatasetError
from pipeline.faces.crops import center_crop, random_crop
from pipeline.faces.shards import ALIGNMENT_TABLE, SHARD_DIR, ShardReader
from pipeline.faces.table import ALIGNED, read_alignment_table

__all__ = ["FaceDataset", "FaceSource", "center_crop", "random_crop"]

Progress = Callable[[int, int], None]


class FaceSource:
    """The aligned faces of one alignment output folder.

    Args:
        root: folder holding ``alignment.parquet`` and ``shards/``.
        max_open: most shard files held open at once per process.

    Attributes:
        root: the folder.
        crop_size: side of the stored square crops in pixels (None when no image was aligned).
        failures: ``{image_id: "status: reason"}`` of the images that failed alignment (restricted to the
            requested ids in a :meth:`subset`).

    Raises:
        DatasetError: missing folder or table, table with missing columns, crops of different sizes.
    """

    def __init__(self, root: Path, *, max_open: int = 256) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"aligned-face folder not found: {root}: run the align stage (python -m stages align)")
        table = read_alignment_table(root / ALIGNMENT_TABLE)
        ok = (table["status"] == ALIGNED).to_numpy(dtype=bool)
        rows = table[ok]
        sizes = np.unique(rows["crop_size"].to_numpy())
        if len(sizes) > 1:
            raise DatasetError(f"{root / ALIGNMENT_TABLE}: crops of several sizes {sizes.tolist()}: re-run align")
        failed = table[~ok]
        failed_cols = (failed[c].tolist() for c in ("image_id", "status", "reason"))
        failures = {i: f"{s}: {r}" if r else s for i, s, r in zip(*failed_cols, strict=True)}
        self._setup(
            root,
            ids=pd.Index(rows["image_id"].to_numpy(dtype=object), dtype=object),
            shard=rows["shard"].to_numpy(np.int64),
            offset=rows["offset"].to_numpy(np.int64),
            length=rows["length"].to_numpy(np.int64),
            crop_size=int(sizes[0]) if len(sizes) else None,
            failures=failures,
            reader=ShardReader(root / SHARD_DIR, max_open=max_open),
        )

    def _setup(
        self,
        root: Path,
        *,
        ids: pd.Index,
        shard: np.ndarray,
        offset: np.ndarray,
        length: np.ndarray,
        crop_size: int | None,
        failures: dict[str, str],
        reader: ShardReader,
    ) -> None:
        self.root = root
        self.crop_size = crop_size
        self.failures = failures
        self._ids = ids  # pd.Index: a C hash table for lookups, far smaller than a dict at MS-Celeb scale
        self._shard, self._offset, self._length = shard, offset, length
        self._reader = reader
        self._ids_list: list[str] | None = None

    # ----------------------------------------------------------------------------------------- ids

    @property
    def ids(self) -> list[str]:
        """Image ids of the aligned faces, in order (face ``i`` is ``ids[i]``). Do not modify the list."""
        if self._ids_list is None:
            self._ids_list = self._ids.tolist()
        return self._ids_list

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"FaceSource({str(self.root)!r}, faces={len(self)}, crop_size={self.crop_size})"

    def _why_missing(self, image_id: str) -> str:
        if image_id in self.failures:
            return f"alignment failed ({self.failures[image_id]})"
        return "not in the alignment table"

    def index(self, image_id: str) -> int:
        """Position of ``image_id`` among the aligned faces.

        Raises:
            KeyError: the image failed alignment or is unknown (the message says which).
        """
        pos = self._ids.get_indexer([image_id])[0]
        if pos < 0:
            raise KeyError(f"{image_id!r} has no aligned face in {self.root}: {self._why_missing(image_id)}")
        return int(pos)

    def indices(self, image_ids: Iterable[str]) -> np.ndarray:
        """Positions ``int64[N]`` of ``image_ids`` (vectorised :meth:`index`).

        Raises:
            KeyError: some ids have no aligned face (names the first and counts them).
        """
        image_ids = list(image_ids)
        pos = self._ids.get_indexer(image_ids) if image_ids else np.zeros(0, dtype=np.int64)
        bad = np.flatnonzero(pos < 0)
        if len(bad):
            first = image_ids[bad[0]]
            raise KeyError(
                f"{len(bad)} of {len(image_ids)} image ids have no aligned face in {self.root}, e.g. {first!r}: "
                f"{self._why_missing(first)}"
            )
        return pos.astype(np.int64)

    def subset(self, image_ids: Iterable[str], missing: Literal["skip", "error"] = "skip") -> tuple[FaceSource, int]:
        """The faces of ``image_ids``, in that order, and the number of ids that have no aligned face.

        With ``missing="skip"`` ids that failed alignment (or are unknown) are dropped and counted; with
        ``"error"`` any such id raises. The subset shares this source's open shard files.

        Raises:
            ValueError: duplicate ids in ``image_ids`` or an unknown ``missing`` mode.
            DatasetError: ``missing="error"`` and some ids have no aligned face.
        """
        if missing not in ("skip", "error"):
            raise ValueError(f"missing must be 'skip' or 'error', got {missing!r}")
        wanted = pd.Index(list(image_ids), dtype=object)
        if wanted.has_duplicates:
            raise ValueError(f"duplicate image ids in subset, e.g. {wanted[wanted.duplicated()][0]!r}")
        pos = self._ids.get_indexer(wanted) if len(wanted) else np.zeros(0, dtype=np.int64)
        gone = pos < 0
        n_missing = int(gone.sum())
        if n_missing and missing == "error":
            first = wanted[int(np.flatnonzero(gone)[0])]
            raise DatasetError(
                f"{n_missing} of {len(wanted)} requested images have no aligned face in {self.root}, "
                f"e.g. {first!r}: {self._why_missing(first)}"
            )
        keep = pos[~gone]
        sub = object.__new__(FaceSource)
        sub._setup(
            self.root,
            ids=self._ids[keep],
            shard=self._shard[keep],
            offset=self._offset[keep],
            length=self._length[keep],
            crop_size=self.crop_size,
            failures={i: self.failures[i] for i in wanted[gone] if i in self.failures},
            reader=self._reader,
        )
        return sub, n_missing

    # ----------------------------------------------------------------------------------------- reading

    def read(self, i: int) -> np.ndarray:
        """Face ``i`` as ``uint8[H, W, 3]`` RGB (``H = W = crop_size``).

        Raises:
            IndexError: ``i`` out of range.
            DatasetError: missing or truncated shard, undecodable bytes, a crop of the wrong size.
        """
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"face index {i} out of range for {n} faces")
        i = int(i) % n
        shard = int(self._shard[i])
        img = self._reader.read(shard, int(self._offset[i]), int(self._length[i]))
        if img.shape[:2] != (self.crop_size, self.crop_size):
            raise DatasetError(
                f"{self._reader.path(shard)} offset {self._offset[i]}: face {self._ids[i]!r} decodes to "
                f"{img.shape[1]}x{img.shape[0]}, the table says {self.crop_size}: re-run the align stage"
            )
        return img

    def read_batch(self, indices: Sequence[int] | np.ndarray, *, threads: int = 1) -> np.ndarray:
        """Faces ``indices`` as ``uint8[N, H, W, 3]`` RGB; ``threads`` > 1 decodes in a thread pool.

        Raises:
            IndexError, DatasetError: as :meth:`read`.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = self.crop_size or 0
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        if threads > 1 and len(indices) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for k, img in enumerate(pool.map(self.read, indices.tolist())):
                    out[k] = img
        else:
            for k, i in enumerate(indices.tolist()):
                out[k] = self.read(i)
        return out

    def read_ids(self, image_ids: Iterable[str], *, threads: int = 1) -> np.ndarray:
        """Faces of ``image_ids`` as ``uint8[N, H, W, 3]`` RGB.

        Raises:
            KeyError: an id without aligned face. DatasetError: as :meth:`read`.
        """
        return self.read_batch(self.indices(image_ids), threads=threads)

    def load_all(
        self,
        device: torch.device | str | None = None,
        *,
        chunk_size: int = 1024,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Every face as one ``uint8`` tensor ``[N, 3, H, W]`` on ``device`` (CPU when None).

        For small datasets: 10,000 faces of 182 px take 1 GB. The output is allocated once on ``device``; faces
        are decoded ``chunk_size`` at a time (``threads`` decoding threads) and copied in, so host memory stays
        at one chunk. ``progress(done, total)`` is called after each chunk.

        Raises:
            DatasetError: as :meth:`read`.
        """
        n, size = len(self), self.crop_size or 0
        out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device)
        for start in range(0, n, max(1, chunk_size)):
            stop = min(n, start + max(1, chunk_size))
            batch = torch.from_numpy(self.read_batch(np.arange(start, stop), threads=threads))
            out[start:stop].copy_(batch.to(out.device).permute(0, 3, 1, 2))
            if progress is not None:
                progress(stop, n)
        return out

    def torch_dataset(self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FaceDataset:
        """A map-style dataset yielding ``(uint8[3, H, W], i)`` (after ``transform``), for DataLoader workers."""
        return FaceDataset(self, transform)

    def close(self) -> None:
        """Close the shard files (reading again reopens them)."""
        self._reader.close()

    def __enter__(self) -> FaceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ids_list"] = None  # rebuilt on demand; keeps pickles (spawn workers) small
        return state


class FaceDataset(Dataset):
    """Map-style dataset over a :class:`FaceSource`: item ``i`` is ``(transform(uint8[3, H, W]), i)``.

    Works with DataLoader workers under ``fork`` (each worker reopens the shard files it reads) and ``spawn``
    (the source pickles without open files). Seed random transforms per worker as usual
    (``torch.initial_seed()`` differs between workers).
    """

    def __init__(self, source: FaceSource, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.source.read(i)).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(i)
