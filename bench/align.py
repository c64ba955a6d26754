"""Throughput of the MTCNN alignment stage: detector-only img/s and files→shards img/s, vs. batch size.

Issue 3 targets: ≥ 2,000 img/s on 250×250 images on an H100 (facenet-pytorch: ~210 img/s); on a 2-core CPU at
least as fast per image as facenet-pytorch's MTCNN on the same machine.

Inputs: ``--n`` synthetic faces per size rendered by :mod:`pipeline.data.demo` (a real MTCNN finds them), at
250×250 (LFW / CASIA-WebFace-like) and 640×480 (rendered at that size), written once as JPEG q95 files into a
temp folder and decoded back, so both measurements see the same pixels.

1. **detector**: decoded images in memory, ``MTCNN.detect(batch)`` over every full batch of the ``--n`` images,
   for each ``--batch-sizes``; warm-up batches (≥ 16 images) first, CUDA synchronised, the median of
   ``--repeats`` passes.
   Also faces per image (sanity: ≈ 1.0), the share of images with a face, and peak CUDA memory.
2. **files→shards**: the align stage's per-image path: read bytes + ``decode_rgb`` (``--decode-workers``
   threads, running ahead of the detector), :func:`pipeline.align.batch.align_images` (detect + choose face +
   crop, ``--convention`` paper_182_44 = 182 px, margin 44) and :func:`pipeline.faces.shards.write_shard`
   (JPEG q95, ``--shard-size`` crops per tar) into a temp folder. The input files sit in the OS page cache (just
   written). Also decode-only and write-only img/s, each measured alone.
3. ``--compare-facenet-pytorch``: facenet-pytorch's ``MTCNN(keep_all=True, min_face_size=20,
   thresholds=[0.6, 0.7, 0.7], factor=0.709).detect(batch)`` on the same batches (it only takes batches of
   equal-size images), same protocol, and the ratio ours/theirs. Skipped with a note when not importable.
   facenet-pytorch always resamples with ``area``; ours uses ``--resample`` (default ``nearest``, the stage's).

``--max-seconds`` bounds the run: each image size gets an equal share of what is left; configurations that no
longer fit are listed as skipped in the JSON (at least one timed pass is always kept once started).

Needs only torch, torchvision, numpy, OpenCV and Pillow (no pandas/pyarrow/pydantic/mtcnn/joblib); the weights
can be an ``.npz`` exported once where the ``mtcnn`` package is installed.

CPU, here (project venv, repo root; facenet-pytorch 2.6.0 installed with --no-deps into /tmp/fpt_site)::

    python -m pipeline.align.weights export mtcnn_weights.npz
    PYTHONPATH=.:/tmp/fpt_site python -m bench.align --device cpu --weights mtcnn_weights.npz \\
        --n 32 --batch-sizes 1 8 32 --compare-facenet-pytorch          # → reports/bench/align-cpu.json

GPU box (torch, torchvision, numpy, opencv, pillow only; copy the repo and mtcnn_weights.npz there)::

    PYTHONPATH=. python -m bench.align --device cuda --weights mtcnn_weights.npz   # → reports/bench/align-cuda.json
    # with the comparison: pip install --no-deps facenet-pytorch==2.6.0 requests (its __init__ imports requests)
    PYTHONPATH=. python -m bench.align --device cuda --weights mtcnn_weights.npz --compare-facenet-pytorch
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL
import torch
import torchvision

from bench.common import device_name, loadavg, machine, print_table, write_json
from pipeline.align.batch import ALIGNED, align_images
from pipeline.align.detector import MTCNN
from pipeline.align.images import ImageProblem, decode_rgb
from pipeline.data.demo import encode_jpeg, render_identity_image
from pipeline.faces.shards import shard_name, write_shard


@dataclass
class Settings:
    """What :func:`align_images` reads (``convention``, ``min_face``) plus the detector's settings."""

    convention: str = "paper_182_44"
    min_face: float = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    resample: str = "nearest"
    shard_size: int = 4096
    quality: int = 95


# ------------------------------------------------------------------------------------------------ inputs
def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` → (640, 480) = (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 640x480, not {text!r}") from exc
    return w, h


def _render_one(task: tuple[Path, int, int, tuple[int, int]]) -> None:
    path, seed, i, size = task
    path.write_bytes(encode_jpeg(render_identity_image(seed, i, 0, image_size=size).image, 95))


def make_inputs(folder: Path, n: int, size: tuple[int, int], seed: int, workers: int
                ) -> tuple[list[Path], list[np.ndarray], dict]:
    """Render ``n`` demo faces at ``size`` (W, H) (identity i, image 0), write them as JPEG q95, decode them back."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [(folder / f"{i:06d}.jpg", seed, i, size) for i in range(n)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_render_one, tasks, chunksize=8)
    else:
        for t in tasks:
            _render_one(t)
    render_s = time.perf_counter() - t0
    paths = [t[0] for t in tasks]
    images = [decode_rgb(p.read_bytes()) for p in paths]
    info = {"n": n, "render_and_write_s": round(render_s, 2), "render_workers": workers,
            "mean_jpeg_kb": round(sum(p.stat().st_size for p in paths) / n / 1024, 1)}
    return paths, images, info


# ------------------------------------------------------------------------------------------------ timing
class Clock:
    """A total time budget, shared out between the image sizes."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def share(self, parts: int) -> float:
        """The deadline (perf_counter) of the next of ``parts`` equal shares of the time left."""
        return time.perf_counter() + max(0.0, self.left()) / max(parts, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_passes(run_pass: Callable[[], Any], device: torch.device, repeats: int, deadline: float
                 ) -> tuple[list[float], Any]:
    """Seconds of up to ``repeats`` passes (at least one; stop once past ``deadline``) and the first pass's result."""
    times, first = [], None
    for r in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = run_pass()
        sync(device)
        times.append(time.perf_counter() - t0)
        if r == 0:
            first = out
        if time.perf_counter() > deadline:
            break
    return times, first


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def full_batches(images: Sequence[np.ndarray], b: int) -> list[list[np.ndarray]]:
    return [list(images[s:s + b]) for s in range(0, len(images) - b + 1, b)]


def result_row(kind: str, size: str, b: int, n_images: int, times: list[float], **extra: Any) -> dict:
    med = statistics.median(times)
    return {"path": kind, "size": size, "batch": b, "images": n_images, "repeats": len(times),
            "seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in times],
            "img_per_s": n_images / med, "ms_per_img": 1000.0 * med / n_images, **extra}


# ------------------------------------------------------------------------------------------------ detector
def bench_detector(name: str, detect: Callable[[list[np.ndarray]], list[int]], images: list[np.ndarray],
                   size: str, batch_sizes: list[int], device: torch.device, repeats: int, deadline: float,
                   skipped: list[dict]) -> list[dict]:
    """``detect(batch)`` → faces per image; one row per batch size that fits the time left."""
    rows = []
    for b in batch_sizes:
        batches = full_batches(images, b)
        if not batches:
            skipped.append({"path": name, "size": size, "batch": b, "why": f"batch > n ({len(images)})"})
            continue
        if time.perf_counter() > deadline:
            skipped.append({"path": name, "size": size, "batch": b, "why": "time budget (--max-seconds)"})
            continue
        reset_peak(device)
        try:
            for x in batches[:max(1, 16 // b)]:  # warm-up: CUDA context, kernels, allocator, oneDNN primitives
                detect(x)
            times, counts = timed_passes(lambda bs=batches: [c for x in bs for c in detect(x)], device, repeats,
                                         deadline)
        except torch.cuda.OutOfMemoryError as exc:
            skipped.append({"path": name, "size": size, "batch": b, "why": f"CUDA out of memory: {exc}"[:200]})
            torch.cuda.empty_cache()
            continue
        n = len(counts)
        rows.append(result_row(name, size, b, n, times, faces_per_img=sum(counts) / n,
                               with_face=sum(c > 0 for c in counts) / n, peak_mib=peak_mib(device)))
        print(f"  {name:15s} {size:8s} batch {b:4d}: {rows[-1]['img_per_s']:9.1f} img/s "
              f"({rows[-1]['faces_per_img']:.3f} faces/img, {len(times)} pass(es))", flush=True)
    return rows


def ours(detector: MTCNN) -> Callable[[list[np.ndarray]], list[int]]:
    return lambda batch: [len(f) for f in detector.detect(batch)]


def facenet_pytorch_detector(settings: Settings, device: torch.device
                             ) -> tuple[Callable[[list[np.ndarray]], list[int]] | None, str]:
    """facenet-pytorch's MTCNN at the same settings, or (None, why not)."""
    try:
        import facenet_pytorch
        from facenet_pytorch import MTCNN as FacenetMTCNN
    except Exception as exc:  # any import problem (missing package or one of its deps) means "skip"
        return None, f"facenet_pytorch not importable: {type(exc).__name__}: {exc}"
    try:
        from importlib.metadata import version

        ver = version("facenet-pytorch")
    except Exception:
        ver = getattr(facenet_pytorch, "__version__", "unknown")
    m = FacenetMTCNN(keep_all=True, min_face_size=int(settings.min_face), thresholds=list(settings.thresholds),
                     factor=settings.factor, device=device)

    def detect(batch: list[np.ndarray]) -> list[int]:
        boxes, _ = m.detect(np.stack(batch))
        return [0 if bx is None else len(bx) for bx in boxes]

    return detect, f"facenet-pytorch {ver} ({Path(facenet_pytorch.__file__).parent})"


# ------------------------------------------------------------------------------------------------ files → shards
def _decode(path: Path) -> np.ndarray | str:
    try:
        return decode_rgb(path.read_bytes())
    except (OSError, ImageProblem) as exc:
        return str(exc)


def decoded_batches(paths: list[Path], b: int, workers: int) -> Iterator[list[np.ndarray | str]]:
    """Batches of decoded images in order; with ``workers`` threads decoding runs ahead of the consumer."""
    if workers <= 0:
        for s in range(0, len(paths), b):
            yield [_decode(p) for p in paths[s:s + b]]
        return
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(_decode, paths)
        for s in range(0, len(paths), b):
            yield [next(it) for _ in paths[s:s + b]]


def files_to_shards(paths: list[Path], out: Path, detector: MTCNN, settings: Settings, b: int, workers: int
                    ) -> dict:
    """The align stage's work on ``paths``: decode, detect, choose, crop, write shards of ``shard_size`` crops."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pending: list[np.ndarray] = []
    n_aligned, n_shards, n_bytes = 0, 0, 0
    for s, batch in enumerate(decoded_batches(paths, b, workers)):
        ids = [p.name for p in paths[s * b:s * b + len(batch)]]
        rows, crops, _ = align_images(batch, ids, detector, settings)
        n_aligned += sum(r["status"] == ALIGNED for r in rows)
        pending += crops
        last = s * b + len(batch) == len(paths)
        while pending and (len(pending) >= settings.shard_size or last):
            ranges = write_shard(out / shard_name(n_shards), pending[:settings.shard_size], fmt="jpeg",
                                 quality=settings.quality)
            n_bytes += sum(length for _, length in ranges)
            n_shards += 1
            pending = pending[settings.shard_size:]
    return {"aligned": n_aligned, "shards": n_shards, "crop_bytes": n_bytes}


def bench_files(paths: list[Path], images: list[np.ndarray], work: Path, detector: MTCNN, settings: Settings,
                size: str, batch_sizes: list[int], workers: int, device: torch.device, repeats: int,
                deadline: float, skipped: list[dict]) -> list[dict]:
    rows = []
    for b in batch_sizes:
        if time.perf_counter() > deadline:
            skipped.append({"path": "files→shards", "size": size, "batch": b, "why": "time budget (--max-seconds)"})
            continue
        b_eff = min(b, len(paths))
        reset_peak(device)
        for i0 in range(0, min(len(images), max(b_eff, 16)), b_eff):  # warm-up
            detector.detect(images[i0:i0 + b_eff])
        times, res = timed_passes(lambda bb=b_eff: files_to_shards(paths, work / "shards", detector, settings, bb,
                                                                   workers), device, repeats, deadline)
        n = len(paths)
        # the two CPU-side parts alone: decode (same thread pool) and shard writing (the crops of the last pass)
        t0 = time.perf_counter()
        for _ in decoded_batches(paths, b_eff, workers):
            pass
        decode_s = time.perf_counter() - t0
        _, crops, _ = align_images(images[:b_eff], [str(i) for i in range(b_eff)], detector, settings)
        write_img_per_s = None
        if crops:
            reps = max(1, n // len(crops))
            t0 = time.perf_counter()
            for _ in range(reps):
                write_shard(work / "write-only.tar", crops, fmt="jpeg", quality=settings.quality)
            write_img_per_s = reps * len(crops) / (time.perf_counter() - t0)
        rows.append(result_row("files→shards", size, b_eff, n, times, aligned_fraction=res["aligned"] / n,
                               shards=res["shards"], crop_kb=round(res["crop_bytes"] / max(res["aligned"], 1) / 1024,
                                                                   1),
                               decode_img_per_s=n / decode_s, write_img_per_s=write_img_per_s,
                               decode_workers=workers, peak_mib=peak_mib(device)))
        print(f"  {'files→shards':15s} {size:8s} batch {b_eff:4d}: {rows[-1]['img_per_s']:9.1f} img/s "
              f"(aligned {rows[-1]['aligned_fraction']:.1%}; decode alone {rows[-1]['decode_img_per_s']:.0f}, "
              f"write alone {rows[-1]['write_img_per_s'] or 0:.0f} img/s)", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu | cuda | cuda:N (default: cuda if any)")
    ap.add_argument("--weights", default=None, help="MTCNN weights: .npz export or folder of *.lz4 "
                    "(default: the installed mtcnn package)")
    ap.add_argument("--n", type=int, default=None, help="images per size (default 512 on CUDA, 32 on CPU)")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[(250, 250), (640, 480)], help="WxH ...")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="detector batch sizes (default 1 8 32 128 256 512 on CUDA, 1 8 32 on CPU)")
    ap.add_argument("--files-batch-sizes", type=int, nargs="+", default=None,
                    help="batch sizes of the files→shards path (default: the largest --batch-sizes)")
    ap.add_argument("--decode-workers", type=int, default=2, help="decoding threads of files→shards (0: inline)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (median reported)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="total time budget after input generation (default 360 on CUDA, 240 on CPU)")
    ap.add_argument("--resample", choices=["nearest", "area", "bilinear"], default="nearest")
    ap.add_argument("--min-face", type=float, default=20)
    ap.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.7])
    ap.add_argument("--factor", type=float, default=0.709)
    ap.add_argument("--convention", choices=["paper_182_44", "facenet_160_32"], default="paper_182_44")
    ap.add_argument("--shard-size", type=int, default=4096, help="crops per shard (as align.shard_size)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 is steadier on a CPU shared with other jobs")
    ap.add_argument("--seed", type=int, default=2019, help="demo renderer seed")
    ap.add_argument("--render-workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="processes rendering the inputs (not timed)")
    ap.add_argument("--compare-facenet-pytorch", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default reports/bench/align-<device>.json)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    n = args.n or (512 if on_cuda else 32)
    batch_sizes = args.batch_sizes or ([1, 8, 32, 128, 256, 512] if on_cuda else [1, 8, 32])
    files_batch_sizes = args.files_batch_sizes or [max(batch_sizes)]
    max_seconds = args.max_seconds if args.max_seconds is not None else (360.0 if on_cuda else 240.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(f"reports/bench/align-{device.type}.json")
    settings = Settings(convention=args.convention, min_face=args.min_face, thresholds=tuple(args.thresholds),
                        factor=args.factor, resample=args.resample, shard_size=args.shard_size)
    t_all = time.perf_counter()
    load_start = loadavg()
    rows: list[dict] = []
    skipped: list[dict] = []
    inputs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-align-") as tmp:
        data = []
        for w, h in args.sizes:
            size = f"{w}x{h}"
            paths, images, info = make_inputs(Path(tmp) / size / "images", n, (w, h), args.seed,
                                               args.render_workers)
            inputs[size] = info
            data.append((size, paths, images))
            print(f"inputs {size}: {n} demo images rendered + written in {info['render_and_write_s']} s "
                  f"({info['mean_jpeg_kb']} KiB/JPEG)", flush=True)
        # the detectors are built after rendering, so that the render processes fork before CUDA starts
        detector = MTCNN(args.weights, device=device, min_face=settings.min_face, thresholds=settings.thresholds,
                         factor=settings.factor, resample=settings.resample)  # type: ignore[arg-type]
        fpt, fpt_note = (None, "not requested (--compare-facenet-pytorch)")
        if args.compare_facenet_pytorch:
            fpt, fpt_note = facenet_pytorch_detector(settings, device)
            print(f"comparison: {fpt_note}")
        clock = Clock(max_seconds)
        for k, (size, paths, images) in enumerate(data):
            deadline = clock.share(len(data) - k)
            # share of this size's time: detector first, then the comparison, then files→shards
            n_parts = 2 + (fpt is not None)
            rows += bench_detector("ours", ours(detector), images, size, batch_sizes, device, args.repeats,
                                   time.perf_counter() + (deadline - time.perf_counter()) / n_parts, skipped)
            if fpt is not None:
                rows += bench_detector("facenet-pytorch", fpt, images, size, batch_sizes, device, args.repeats,
                                       time.perf_counter() + (deadline - time.perf_counter()) / 2, skipped)
            rows += bench_files(paths, images, Path(tmp) / size, detector, settings, size, files_batch_sizes,
                                args.decode_workers, device, args.repeats, deadline, skipped)

    ratios = []
    for r in rows:
        if r["path"] != "ours":
            continue
        theirs = next((t for t in rows if t["path"] == "facenet-pytorch" and t["size"] == r["size"]
                       and t["batch"] == r["batch"]), None)
        if theirs:
            ratios.append({"size": r["size"], "batch": r["batch"], "ours_img_per_s": r["img_per_s"],
                           "facenet_pytorch_img_per_s": theirs["img_per_s"],
                           "ratio_ours_over_theirs": r["img_per_s"] / theirs["img_per_s"]})

    print(f"\nMTCNN alignment on {device} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, resample {settings.resample}, {n} images per size\n")
    columns = ["path", "size", "batch", "images", "repeats", "img_per_s", "ms_per_img", "faces_per_img", "with_face",
               "aligned_fraction", "peak_mib"]
    print_table([{c: "-" if r.get(c) is None else r[c] for c in columns} for r in rows], columns)
    if ratios:
        print()
        print_table(ratios, ["size", "batch", "ours_img_per_s", "facenet_pytorch_img_per_s",
                             "ratio_ours_over_theirs"])
    if skipped:
        print("\nskipped: " + "; ".join(f"{s['path']} {s['size']} b{s['batch']} ({s['why']})" for s in skipped))
    if args.compare_facenet_pytorch and fpt is None:
        print(f"\nfacenet-pytorch comparison skipped: {fpt_note}")

    payload = {
        "benchmark": "align",
        "machine": machine(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
                     "opencv": cv2.__version__, "pillow": PIL.__version__},
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if on_cuda else None,
        "settings": {**asdict(settings), "n_per_size": n, "batch_sizes": batch_sizes,
                     "files_batch_sizes": files_batch_sizes, "decode_workers": args.decode_workers,
                     "repeats": args.repeats, "max_seconds": max_seconds, "seed": args.seed,
                     "weights": str(args.weights) if args.weights else "mtcnn package",
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "inputs": inputs,
        "facenet_pytorch": fpt_note,
        "results": rows,
        "ratios": ratios,
        "skipped": skipped,
        "loadavg_1_5_15": {"start": load_start, "end": loadavg()},  # other jobs on the machine skew CPU numbers
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    write_json(out, payload)


if __name__ == "__main__":
    main()
