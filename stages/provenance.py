"""What a stage run read: the content hash of each input, computed from the files when the stage runs.

A stage names the inputs it opens (:class:`Input`); :func:`input_tags` hashes them in DVC's own format, so an
unchanged input shows the very value ``dvc.lock`` records for it, and a changed one (an image edited after the
upstream stage ran, a stage run by hand) shows what was really read, never what ``dvc.lock`` last saw:

- a file: the md5 of its bytes;
- a folder: DVC's directory hash: the md5 of the JSON list ``[{"md5": <file md5>, "relpath": <posix path>}, ...]``
  sorted by path (keys sorted), followed by ``.dir``; plus the number of files.

The inputs that are datasets (manifests, fold files, pair files) are also registered as MLflow dataset inputs
(:func:`log_dataset_inputs`) with that md5 as their digest, so the run list's Dataset column says what each run
trained and was evaluated on. Hashing reads every input once (about 0.2 s per 100 MB from the page cache: each
input was just written by the upstream stage); it is logged as the run's ``provenance_seconds`` metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Input", "content_hash", "fold_inputs", "input_tags", "log_dataset_inputs"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Input:
    """One input a stage opens.

    Attributes:
        path: the file or folder, relative to the repository root (or absolute).
        dataset: the MLflow dataset name when this input is a dataset the run trains or is evaluated on
            (None: tagged only).
        context: the MLflow dataset input's context: ``training``, ``evaluation`` or ``source`` (what the stage
            reads its images or labels from).
    """

    path: str
    dataset: str | None = None
    context: str = "source"


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(md5, number of files)`` of a file or folder in DVC's format (see the module docstring); None if missing."""
    path = Path(path)
    if path.is_file():
        return _md5_file(path), 1
    if not path.is_dir():
        return None
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).parts)
    listing = [{"md5": _md5_file(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir", len(listing)


def _key(root: Path, path: str) -> str:
    """The tag name of ``path``: relative to the repository when inside it."""
    p = Path(path)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p.as_posix()
    return p.as_posix()


def input_tags(root: Path, inputs: Iterable[Input]) -> tuple[dict[str, str], dict[str, str], float]:
    """Hash every input now.

    Returns:
        ``(tags, digests, seconds)``: tags ``input.<path>.md5`` and (folders) ``input.<path>.nfiles``, or
        ``input.<path>.md5 = missing``; the md5 of each input path; the time the hashing took.
    """
    start = time.perf_counter()
    tags: dict[str, str] = {}
    digests: dict[str, str] = {}
    for item in inputs:
        key = _key(root, item.path)
        path = Path(item.path) if Path(item.path).is_absolute() else root / item.path
        found = content_hash(path)
        if found is None:
            tags[f"input.{key}.md5"] = "missing"
            continue
        md5, n = found
        tags[f"input.{key}.md5"] = md5
        digests[item.path] = md5
        if md5.endswith(".dir"):
            tags[f"input.{key}.nfiles"] = str(n)
    return tags, digests, time.perf_counter() - start


def log_dataset_inputs(mlflow: Any, root: Path, inputs: Sequence[Input], digests: dict[str, str]) -> None:
    """Register each input that names a ``dataset`` as an MLflow dataset input (source: its absolute path; digest:
    its md5 without DVC's ``.dir`` suffix), with its ``context``."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for item in inputs:
        if item.dataset is None or item.path not in digests:
            continue
        path = Path(item.path) if Path(item.path).is_absolute() else root / item.path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(path.resolve()))
        dataset = MetaDataset(source, name=item.dataset, digest=digests[item.path].removesuffix(".dir"))
        mlflow.log_input(dataset, context=item.context)


def fold_inputs(run: dict[str, Path], dataset: str, fold: int) -> list[Input]:
    """The inputs of a per-fold run (``finetune``, ``pixel_baseline``; ``run`` = :func:`pipeline.paths.finetune_run`):
    the manifest (source), the fold file (training), its pairs (evaluation) and the aligned faces."""
    return [Input(str(run["manifest"]), dataset=dataset),
            Input(str(run["fold"]), dataset=f"{dataset} fold{fold}", context="training"),
            Input(str(run["pairs"]), dataset=f"{dataset} fold{fold} pairs", context="evaluation"),
            Input(str(run["aligned"]))]
