"""Align a whole dataset: manifest → MTCNN → chosen face → crops in shards + the alignment table.

Conventions without a detector (``resize_only``: the whole image; ``landmarks_box``: the box around WebCaricature's
landmarks; :mod:`pipeline.align.nodetect`) run the same way and write the same outputs, with no detector loaded
(the MTCNN weights are neither read nor needed).

The manifest's rows are cut into fixed chunks (``shard_size`` rows); chunk ``k`` becomes ``shard-k.tar`` plus a
small per-chunk table, written into a *work folder* keyed by the manifest's content and every setting that changes
the result (:func:`work_key`). A finished chunk is never redone: after an interruption (Ctrl-C, SIGKILL, a lost
node) the next run only aligns the chunks that have no table yet. When every chunk is done, :func:`assemble` moves
the shards into the output folder and writes ``alignment.parquet``.

Several processes (``torchrun --nproc_per_node=N -m pipeline.align.run JOB.json``; one per GPU) split the chunks
round-robin by rank (chunk ``k`` goes to rank ``k mod N``), each writes only its own chunks, and after a barrier
rank 0 alone checks the failure share and assembles the output. Results do not depend on the number of processes:
each chunk is computed the same way wherever it runs.

Statuses: ``aligned``; ``no_face`` (nothing above the O-Net threshold — never a whole-image fallback);
``too_small`` (shorter side < ``min_face``: MTCNN cannot look at it); ``unreadable`` (empty or undecodable file);
``landmarks_box`` only: ``missing_landmarks`` and ``bad_landmarks`` (:mod:`pipeline.align.nodetect`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.align.batch import align_images
from pipeline.align.crop import CONVENTIONS
from pipeline.align.detector import MTCNN
from pipeline.align.images import ImageProblem, decode_rgb, read_image_bytes
from pipeline.align.nodetect import LandmarkProblem, Landmarks, read_image_landmarks
from pipeline.align.weights import mtcnn_package_weights_dir
from pipeline.errors import DatasetError, UserError
from pipeline.faces.shards import ALIGNMENT_TABLE, SHARD_DIR, shard_name, write_shard
from pipeline.faces.table import ALIGNED, write_alignment_table
from pipeline.processes import die_with_parent, loader_worker_init

log = logging.getLogger("pipeline.align")

__all__ = ["AlignJob", "AlignSettings", "assemble", "run_job", "summarize", "work_key"]

# Settings that do not change the result (excluded from the work key).
_NOT_IN_KEY = ("device", "batch_size", "workers", "processes", "max_failure_fraction")


@dataclass
class AlignSettings:
    """Detector, crop and storage settings (``align`` in params.yaml, plus the dataset's convention and, for
    ``landmarks_box``, its ``[width, height]`` box factors ``landmark_box``)."""

    convention: str = "paper_182_44"
    device: str = "auto"
    batch_size: int = 16
    workers: int = 2
    processes: int = 1
    min_face: float = 20
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.7])
    factor: float = 0.709
    nms: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.7, 0.7])
    resample: str = "nearest"
    max_side: int = 4096
    shard_size: int = 4096
    format: str = "jpeg"
    quality: int = 95
    max_failure_fraction: float = 0.05
    landmark_box: list[float] | None = None

    @property
    def detects(self) -> bool:
        """Whether the convention runs MTCNN (False: ``resize_only``, ``landmarks_box``)."""
        return CONVENTIONS[self.convention].detect

    def detector(self, device: str | None = None, weights: str | Path | None = None) -> MTCNN:
        return MTCNN(weights, device=device or self.device, min_face=self.min_face, thresholds=self.thresholds,
                     factor=self.factor, nms=self.nms, resample=self.resample, max_side=self.max_side)  # type: ignore[arg-type]


@dataclass
class AlignJob:
    """Everything one alignment run needs; serialised to JSON for ``torchrun`` workers."""

    dataset: str
    manifest: str          # parquet written by the manifest stage
    root: str              # dataset root the manifest's paths are relative to
    work_dir: str          # resumable per-chunk results
    out_dir: str           # final folder: alignment.parquet + shards/
    settings: AlignSettings
    weights: str | None = None

    @classmethod
    def from_json(cls, path: str | Path) -> AlignJob:
        raw = json.loads(Path(path).read_text())
        raw["settings"] = AlignSettings(**raw["settings"])
        return cls(**raw)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


def _code_and_weights_digest(weights: str | Path | None, detects: bool = True) -> bytes:
    """The alignment code and the detector weights (when the convention uses the detector): a resumed run must
    not mix crops of two versions."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    if not detects:
        return h.digest()
    wpath = Path(weights) if weights is not None else mtcnn_package_weights_dir()
    for f in sorted(wpath.glob("*.lz4")) if wpath.is_dir() else [wpath]:
        h.update(f.read_bytes())
    return h.digest()


def work_key(manifest: Path, settings: AlignSettings, weights: str | Path | None = None) -> str:
    """Hash of the manifest's bytes, every setting that changes the crops (not device/batch/workers), the
    alignment code and the weights (not read for a convention without detector)."""
    h = hashlib.sha256(Path(manifest).read_bytes())
    relevant = {k: v for k, v in asdict(settings).items() if k not in _NOT_IN_KEY}
    h.update(json.dumps(relevant, sort_keys=True).encode())
    h.update(_code_and_weights_digest(weights, settings.detects))
    return h.hexdigest()[:16]


def chunk_table(work_dir: Path, k: int) -> Path:
    return Path(work_dir) / f"{shard_name(k)}.parquet"


def chunk_range(k: int, rows: int, size: int) -> range:
    """The manifest rows of chunk ``k`` (the crops of shard ``k``)."""
    return range(k * size, min((k + 1) * size, rows))


def manifest_rows(manifest: str | Path) -> int:
    """Number of images in a manifest (parquet metadata only)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(manifest).metadata.num_rows


def chunk_done(work_dir: Path, k: int) -> bool:
    """A chunk is finished when its shard and its table (written last) are both in the work folder."""
    return chunk_table(work_dir, k).is_file() and (Path(work_dir) / shard_name(k)).is_file()


# ---------------------------------------------------------------- decoding (DataLoader worker processes)
class _Images(Dataset):
    """Decodes manifest rows into RGB arrays; a problem becomes a reason string instead of an exception.

    ``convention`` ``landmarks_box``: each item also carries the image's landmarks (or what is wrong with them), and
    the image is decoded as the original's ``cv2.imread`` (EXIF orientation applied, :func:`decode_rgb`), so that it
    is oriented as its landmarks."""

    def __init__(self, root: Path, paths: Sequence[str], convention: str = "paper_182_44") -> None:
        self.root, self.paths = Path(root), list(paths)
        self.landmarks = convention == "landmarks_box"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str, Landmarks | LandmarkProblem | None]:
        try:
            image = decode_rgb(read_image_bytes(self.root, self.paths[i]), exif_orientation=self.landmarks)
        except ImageProblem as exc:
            return i, str(exc), None
        return i, image, read_image_landmarks(self.root, self.paths[i]) if self.landmarks else None


def _collate(items: list) -> list:
    return items


def _finish_chunk(work_dir: Path, k: int, rows: list[dict], crops: list[np.ndarray], settings: AlignSettings) -> None:
    ranges = write_shard(Path(work_dir) / shard_name(k), crops, fmt=settings.format, quality=settings.quality)  # type: ignore[arg-type]
    it = iter(ranges)
    for row in rows:
        if row["status"] == ALIGNED:
            row["offset"], row["length"] = next(it)
            row["shard"] = k
    write_alignment_table(pd.DataFrame(rows), chunk_table(work_dir, k))


# ---------------------------------------------------------------- a run (one rank)
def _device_for_rank(device: str, local_rank: int) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"align: process {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            "set align.processes to at most the number of GPUs")
        return f"cuda:{local_rank}"
    return device


def align_chunks(job: AlignJob, chunks: Sequence[int], *, local_rank: int = 0,
                 progress: Callable[[int], None] | None = None) -> int:
    """Align the given chunks of the job that are not finished yet; returns the number of images processed."""
    s = job.settings
    df = pd.read_parquet(job.manifest, columns=["image_id", "path"])
    work = Path(job.work_dir)
    pending = [k for k in chunks if not chunk_done(work, k)]
    if not pending:
        return 0
    detector = s.detector(_device_for_rank(s.device, local_rank), job.weights) if s.detects else None
    index: list[int] = []
    batches: list[list[int]] = []
    for k in pending:  # batches never cross a chunk, so each chunk's shard is written as soon as it is done
        rows_k = chunk_range(k, len(df), s.shard_size)
        start = len(index)
        batches += [list(range(start + b, start + min(b + s.batch_size, len(rows_k))))
                    for b in range(0, len(rows_k), s.batch_size)]
        index.extend(rows_k)
    sub = df.iloc[index]
    loader = DataLoader(_Images(Path(job.root), sub["path"].tolist(), s.convention), batch_sampler=batches,
                        num_workers=s.workers, collate_fn=_collate, worker_init_fn=loader_worker_init())
    ids = sub["image_id"].tolist()
    chunk_of = [index[i] // s.shard_size for i in range(len(index))]
    rows: list[dict] = []
    crops: list[np.ndarray] = []
    n = 0
    loaded = iter(loader)
    try:
        for batch in loaded:
            positions = [i for i, _, _ in batch]
            r, c, _ = align_images([im for _, im, _ in batch], [ids[i] for i in positions], detector, s,
                                   [marks for _, _, marks in batch])
            rows += r
            crops += c
            n += len(batch)
            if progress:
                progress(len(batch))
            k = chunk_of[positions[-1]]
            if positions[-1] + 1 == len(index) or chunk_of[positions[-1] + 1] != k:
                _finish_chunk(work, k, rows, crops, s)
                rows, crops = [], []
    finally:
        del loaded  # stops the decoding workers now, also on an error or an interrupt (the traceback keeps the frame)
    return n


def summarize(table: pd.DataFrame) -> dict:
    """Counts for the metrics file: images, aligned, failures by status, several-face images, shards."""
    status = table["status"].astype(str)
    n = len(table)
    failed = status != ALIGNED
    aligned = table[~failed]
    scores = aligned["score"].dropna()  # null for every face of a convention without detector
    return {
        "images": n,
        "aligned": int((~failed).sum()),
        "failed": int(failed.sum()),
        "aligned_fraction": round(float((~failed).mean()) if n else 0.0, 6),
        "failures_by_reason": {k: int(v) for k, v in status[failed].value_counts().sort_index().items()},
        "several_faces": int((aligned["n_faces"] > 1).sum()),
        "mean_score": round(float(scores.mean()), 6) if len(scores) else None,
        "shards": int(aligned["shard"].nunique()) if len(aligned) else 0,
        "bytes": int(aligned["length"].sum()),
    }


def collect(job: AlignJob, n_chunks: int) -> pd.DataFrame:
    """The per-chunk tables of a finished job, concatenated in manifest order."""
    from pipeline.faces.table import read_alignment_table

    missing = [k for k in range(n_chunks) if not chunk_done(Path(job.work_dir), k)]
    if missing:
        raise DatasetError(f"align {job.dataset}: chunk(s) {missing[:5]} not finished; re-run the align stage")
    return pd.concat([read_alignment_table(chunk_table(Path(job.work_dir), k)) for k in range(n_chunks)],
                     ignore_index=True)


def check_failures(job: AlignJob, table: pd.DataFrame) -> dict:
    summary = summarize(table)
    frac = summary["failed"] / max(summary["images"], 1)
    if frac > job.settings.max_failure_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_reason"].items())
        first = table[table["status"] != ALIGNED].iloc[0]
        raise DatasetError(
            f"align {job.dataset}: {summary['failed']} of {summary['images']} images not aligned "
            f"({frac:.1%} > align.max_failure_fraction={job.settings.max_failure_fraction}); {reasons}; "
            f"first: {first['image_id']}: {first['reason']}")
    return summary


def assemble(job: AlignJob, table: pd.DataFrame, n_chunks: int) -> None:
    """Move the work folder's shards into ``out_dir/shards`` and write ``out_dir/alignment.parquet``."""
    out = Path(job.out_dir)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for k in range(n_chunks):
        src = Path(job.work_dir) / shard_name(k)
        if (table["shard"] == k).any():
            os.replace(src, out / SHARD_DIR / shard_name(k))
    write_alignment_table(table, out / ALIGNMENT_TABLE)


def pending_images(job: AlignJob) -> int:
    """How many manifest rows the job still has to align (rows of unfinished chunks)."""
    rows, size = manifest_rows(job.manifest), job.settings.shard_size
    return sum(len(chunk_range(k, rows, size)) for k in range(n_chunks_of(job))
               if not chunk_done(Path(job.work_dir), k))


def n_chunks_of(job: AlignJob) -> int:
    rows = manifest_rows(job.manifest)
    if rows == 0:
        raise DatasetError(f"align {job.dataset}: the manifest {job.manifest} is empty")
    return -(-rows // job.settings.shard_size)


def run_job(job: AlignJob, *, rank: int = 0, world: int = 1, local_rank: int = 0,
            progress: Callable[[int], None] | None = None, barrier: Callable[[], None] | None = None) -> dict | None:
    """One rank's part of a job; rank 0 then assembles the output and returns the summary (others: None)."""
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    n_chunks = n_chunks_of(job)
    mine = list(range(rank, n_chunks, world))
    t0 = time.perf_counter()
    n = align_chunks(job, mine, local_rank=local_rank, progress=progress)
    seconds = time.perf_counter() - t0
    (Path(job.work_dir) / f"rank-{rank}.json").write_text(
        json.dumps({"rank": rank, "world": world, "chunks": mine, "images": n, "seconds": seconds}))
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    table = collect(job, n_chunks)
    summary = check_failures(job, table)
    assemble(job, table, n_chunks)
    ranks = [json.loads((Path(job.work_dir) / f"rank-{r}.json").read_text()) for r in range(world)]
    summary["processes"] = world
    summary["processed_this_run"] = sum(r["images"] for r in ranks)
    slowest = max(r["seconds"] for r in ranks)
    summary["seconds"] = round(slowest, 3)
    summary["images_per_second"] = round(summary["processed_this_run"] / slowest, 2) if slowest > 0 else None
    return summary


def clear_work(job: AlignJob) -> None:
    shutil.rmtree(job.work_dir, ignore_errors=True)


# ---------------------------------------------------------------- torchrun entry point
def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc_per_node=N -m pipeline.align.run JOB.json``: one rank of a multi-process alignment."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.align.run")
    parser.add_argument("job", help="job JSON written by the align stage")
    args = parser.parse_args(argv)
    die_with_parent(sig=signal.SIGTERM)  # a rank ends with its torchrun
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = AlignJob.from_json(args.job)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    barrier = None
    if world > 1:
        import datetime

        import torch.distributed as dist

        # gloo only synchronises the ranks (no tensors move); a long timeout lets slow ranks finish their slices.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        barrier = dist.barrier
    state = {"n": 0, "t0": time.perf_counter(), "last": 0.0}

    def progress(k: int) -> None:
        state["n"] += k
        now = time.perf_counter()
        if now - state["last"] > 10:
            state["last"] = now
            rate = state["n"] / max(now - state["t0"], 1e-9)
            log.info("rank %d/%d: %d images (%.0f img/s)", rank, world, state["n"], rate)

    error_file = Path(job.work_dir) / f"error-rank{rank}.txt"
    error_file.unlink(missing_ok=True)
    try:
        summary = run_job(job, rank=rank, world=world, local_rank=local_rank, progress=progress, barrier=barrier)
        if summary is not None:
            (Path(job.work_dir) / "summary.json").write_text(json.dumps(summary))
        return 0
    except UserError as exc:
        error_file.write_text(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the launching stage, with the traceback on stderr
        error_file.write_text(f"align rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
