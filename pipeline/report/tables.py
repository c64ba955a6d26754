"""The paper's table from per-fold metrics: per-fold values, mean ± std per method, paired differences.

Inputs are the metrics files of the ``finetune@<dataset>-<fold>-<method>`` and ``pixel_baseline@<dataset>-<fold>``
stages (one JSON per (fold, method), ``{dataset, fold, method, selection, last: M, best: {selected_on, <criterion>:
M...}}``), read for exactly the (fold, method) pairs the params list (:func:`read_results`), never by globbing: a
fold removed from ``folds.run`` is not picked up from a stale file.

The columns follow the task set's evaluations (:func:`columns`): verification accuracy, VAL@FAR and AUC of the
verified task; the accuracy of each classification task (its name is its column key); Rank-1 of the identified task.

Two variants of every number:

- ``last``: the last epoch of every fold;
- ``best``: per criterion the epoch the finetune stage selected (``finetune.common.selection``; the original's
  protocol is the best epoch *on the test fold*, an optimistic number the tables label as such). Verification
  columns take the epoch selected on verification, a classification column the epoch selected on its task.

Mean ± std over folds use the population std (``ddof = 0``, as ``numpy.std`` in the original's evaluation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.paths import run_tag
from pipeline.report.paper import paper_value
from pipeline.settings import TaskSetSettings

__all__ = ["PIXEL_METHOD", "VARIANTS", "Cell", "Column", "Results", "column_keys", "columns", "fold_table",
           "fold_value", "method_label", "ordered_methods", "paired_bootstrap", "paired_differences", "paper_keys",
           "read_results", "read_run_records", "summarise", "summary_table"]

VARIANTS: tuple[str, ...] = ("last", "best")
PIXEL_METHOD = "pixel_pca"
_LABELS = {
    "pretrained": "pretrained single-task, no fine-tuning",
    "static": "static MTL",
    "equal": "equal weights",
    "naive_dynamic": "naive dynamic",
    "dynamic": "dynamic (paper)",
    "uncertainty": "uncertainty (Kendall et al. 2018)",
    "dwa": "DWA (Liu et al. 2019)",
    "gradnorm": "GradNorm (Chen et al. 2018)",
    PIXEL_METHOD: "raw-pixel PCA, no learning",
}


def _paper_rows(tasks: TaskSetSettings) -> tuple[str, ...]:
    """The paper's rows in the paper's order: pretrained, each single task, static, naive dynamic, dynamic."""
    return ("pretrained", *(f"single_{t}" for t in tasks.names), "static", "naive_dynamic", "dynamic")


def method_label(method: str, tasks: TaskSetSettings) -> str:
    """The row label of a method (its name when it is not one of the standard methods); ``single_<first task>``
    is marked fine-tuned, to tell it from the pretrained row."""
    for i, t in enumerate(tasks.names):
        if method == f"single_{t}":
            return f"single-task {t}" + (" (fine-tuned)" if i == 0 else "")
    return _LABELS.get(method, method)


def ordered_methods(methods: Sequence[str], tasks: TaskSetSettings) -> list[str]:
    """``methods`` in table order: the paper's rows, then the others as given, the pixel baseline last."""
    rows = _paper_rows(tasks)
    first = [m for m in rows if m in methods]
    rest = [m for m in methods if m not in rows and m != PIXEL_METHOD]
    return first + rest + ([PIXEL_METHOD] if PIXEL_METHOD in methods else [])


@dataclass(frozen=True)
class Column:
    """One result column: ``key`` (``verification`` | ``val`` | ``auc`` | a classification task | ``rank1``),
    ``kind`` (how it is read from a metrics block), its title and the best-epoch criterion that picks its epoch in
    the ``best`` variant."""

    key: str
    kind: str
    title: str
    criterion: str


def columns(val_far: float, tasks: TaskSetSettings) -> tuple[Column, ...]:
    """The table's columns for ``tasks``, with the VAL column at ``val_far``."""
    cols: list[Column] = []
    if tasks.evaluated("verification"):
        cols += [Column("verification", "verification", "verification acc.", "verification"),
                 Column("val", "val", f"VAL@FAR={val_far:g}", "verification"),
                 Column("auc", "auc", "AUC", "verification")]
    cols += [Column(t, "classification", f"{t} acc.", t) for t in tasks.evaluated("classification")]
    if tasks.evaluated("identification"):
        cols.append(Column("rank1", "identification", "Rank-1", "identification"))
    return tuple(cols)


def column_keys(tasks: TaskSetSettings) -> tuple[str, ...]:
    """The keys of :func:`columns` (``metrics/report.json``)."""
    return tuple(c.key for c in columns(1e-3, tasks))


def paper_keys(cols: Sequence[Column]) -> list[str]:
    """The columns the paper's numbers stand beside: verification accuracy and each classification accuracy."""
    return [c.key for c in cols if c.kind in ("verification", "classification")]


@dataclass(frozen=True)
class Results:
    """The metrics records of one dataset: ``records[(method, fold)]`` for every listed method and fold."""

    dataset: str
    folds: tuple[int, ...]
    methods: tuple[str, ...]
    records: dict[tuple[str, int], dict[str, Any]] = field(repr=False)


def read_results(metrics_dir: Path, dataset: str, folds: Iterable[int], methods: Iterable[str]) -> Results:
    """Read ``<metrics_dir>/fold<k>-<method>.json`` for every listed fold and method (nothing else).

    Raises:
        DatasetError: a file is missing or unreadable, or it belongs to another dataset, fold or method (one line).
    """
    folds, methods = tuple(folds), tuple(methods)
    records = read_run_records(metrics_dir, {
        (method, fold): (f"{run_tag(fold, method)}.json", {"dataset": dataset, "fold": fold, "method": method})
        for method in methods for fold in folds})
    return Results(dataset, folds, methods, records)


def read_run_records(metrics_dir: str | Path, files: Mapping[Any, tuple[str, Mapping[str, Any]]]
                     ) -> dict[Any, dict[str, Any]]:
    """The metrics JSON of each run: ``files`` maps a key to ``(file name in metrics_dir, the values the record's
    identifying keys must hold)``, e.g. ``{"dataset": d, "fold": k, "method": m}``; the result maps the same keys
    to the records.

    Raises:
        DatasetError: files missing (all named, four at most shown), unreadable, or holding another run (one line).
    """
    records: dict[Any, dict[str, Any]] = {}
    missing: list[str] = []
    for key, (name, expected) in files.items():
        path = Path(metrics_dir) / name
        if not path.is_file():
            missing.append(path.name)
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable metrics file ({exc})") from None
        found = tuple(record.get(k) for k in expected)
        if found != tuple(expected.values()):
            raise DatasetError(f"{path}: holds {'/'.join(expected)} {found}, expected {tuple(expected.values())}")
        records[key] = record
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise DatasetError(f"{metrics_dir}: no metrics for {shown} (run `dvc repro` to produce them)")
    return records


@dataclass(frozen=True)
class FoldValue:
    """One fold's value of one column: a number, ``None`` (the method does not report it), or not measurable
    (VAL whose FAR target is below the fold's measurable floor: ``floor`` is set, ``value`` is ``None``)."""

    value: float | None
    epoch: int | None = None
    floor: float | None = None


def _block(record: dict[str, Any], variant: str, criterion: str) -> dict[str, Any] | None:
    if variant == "last":
        return record.get("last")
    if variant == "best":
        return (record.get("best") or {}).get(criterion)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _val_entry(verification: dict[str, Any], far: float) -> dict[str, Any] | None:
    for key, entry in (verification.get("val_at_far") or {}).items():
        if float(key) == far:
            return entry
    return None


def fold_value(record: dict[str, Any], variant: str, column: Column, val_far: float) -> FoldValue:
    """The value of ``column`` in one fold's metrics record (fractions, not percent)."""
    m = _block(record, variant, column.criterion)
    if not m:
        return FoldValue(None)
    epoch = m.get("epoch")
    if column.kind == "classification":
        block = m.get(column.key)
        return FoldValue(None if not block else _number(block.get("accuracy")), epoch)
    if column.kind == "identification":
        return FoldValue(_number(m.get("identification_rank1")), epoch)
    ver = m.get("verification")
    if not ver:
        return FoldValue(None, epoch)
    if column.kind == "verification":
        return FoldValue(_number(ver.get("accuracy")), epoch)
    if column.kind == "auc":  # None when the fold's pairs are all of one kind
        return FoldValue(_number(ver.get("auc")), epoch)
    entry = _val_entry(ver, val_far)
    if entry is None:
        raise DatasetError(f"fold {record.get('fold')} {record.get('method')}: no VAL at FAR {val_far:g} in its "
                           f"metrics (targets: {sorted(float(k) for k in ver.get('val_at_far') or {})})")
    if not entry.get("measurable"):
        # no different-identity pairs at all: no FAR is measurable (an infinite floor)
        floor = entry.get("far_floor")
        return FoldValue(None, epoch, floor=math.inf if floor is None else float(floor))
    return FoldValue(_number(entry.get("val")), epoch)


def _number(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Cell:
    """Mean ± std over folds of one (method, variant, column); ``floor`` is set when any fold could not measure
    the value (VAL below the FAR floor); ``n`` counts the folds with a number."""

    mean: float | None
    std: float | None
    n: int
    floor: float | None = None


def summarise(values: Sequence[FoldValue]) -> Cell:
    """Mean and population std of the folds' numbers; unmeasurable when any fold is (its largest floor)."""
    floors = [v.floor for v in values if v.floor is not None]
    if floors:
        return Cell(None, None, 0, floor=max(floors))
    numbers = np.array([v.value for v in values if v.value is not None], dtype=np.float64)
    if numbers.size == 0:
        return Cell(None, None, 0)
    return Cell(float(numbers.mean()), float(numbers.std()), int(numbers.size))


def fold_table(results: Results, val_far: float, tasks: TaskSetSettings) -> pd.DataFrame:
    """One row per (method, fold, variant): every column's value (NaN: not reported or not measurable), the VAL
    floor where unmeasurable, the epochs the values come from (``epoch_<criterion>``) and what the best epoch was
    selected on."""
    rows = []
    cols = columns(val_far, tasks)
    criteria = list(dict.fromkeys(c.criterion for c in cols))
    for method in ordered_methods(results.methods, tasks):
        for fold in results.folds:
            record = results.records[(method, fold)]
            for variant in VARIANTS:
                values = {c.key: fold_value(record, variant, c, val_far) for c in cols}
                epochs = {crit: next(values[c.key].epoch for c in cols if c.criterion == crit) for crit in criteria}
                selected = "last epoch" if variant == "last" else (record.get("best") or {}).get("selected_on")
                row = {"dataset": results.dataset, "method": method, "fold": fold, "variant": variant,
                       "selected_on": selected, **{f"epoch_{crit}": e for crit, e in epochs.items()},
                       **{c.key: values[c.key].value for c in cols}}
                if "val" in values:
                    row.update(val_far=val_far, val_floor=values["val"].floor)
                rows.append(row)
    frame = pd.DataFrame(rows)
    for key in [*(c.key for c in cols), *(["val_floor"] if "val_floor" in frame else [])]:
        frame[key] = frame[key].astype("float64")
    return frame


def summary_table(results: Results, val_far: float, benchmark: str | None, tasks: TaskSetSettings) -> pd.DataFrame:
    """One row per (method, variant): mean, std and folds of every column (percent), the paper's numbers beside
    the verification and classification columns and ours − paper (NaN where the paper reports nothing)."""
    rows = []
    cols = columns(val_far, tasks)
    for method in ordered_methods(results.methods, tasks):
        for variant in VARIANTS:
            row: dict[str, Any] = {"dataset": results.dataset, "method": method,
                                   "label": method_label(method, tasks), "variant": variant,
                                   "folds": len(results.folds)}
            for c in cols:
                cell = summarise([fold_value(results.records[(method, f)], variant, c, val_far)
                                  for f in results.folds])
                row[f"{c.key}_mean"] = None if cell.mean is None else 100.0 * cell.mean
                row[f"{c.key}_std"] = None if cell.std is None else 100.0 * cell.std
                row[f"{c.key}_n"] = cell.n
                if c.key == "val":
                    row["val_floor"] = cell.floor
            for key in paper_keys(cols):
                paper = paper_value(benchmark, method, key)
                row[f"{key}_paper"] = None if paper is None else paper.value
                ours = row[f"{key}_mean"]
                row[f"{key}_delta"] = None if paper is None or ours is None else ours - paper.value
            rows.append(row)
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame.columns if c.endswith(("_mean", "_std", "_paper", "_delta", "_floor"))]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def paired_bootstrap(diffs: Sequence[float], *, n_boot: int, confidence: float, seed: int
                     ) -> tuple[float, float, float]:
    """Mean of paired differences and its percentile bootstrap interval (folds resampled with replacement).

    Returns ``(mean, low, high)``; with one fold the interval is that fold's difference.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired differences")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(d.mean()), float(low), float(high)


def paired_differences(results: Results, reference: str, val_far: float, tasks: TaskSetSettings, *, n_boot: int,
                       confidence: float, seed: int) -> pd.DataFrame:
    """Per method ≠ ``reference``, variant and column: the mean over folds of (method − reference) in percentage
    points with a bootstrap interval, over the folds where both have a number."""
    rows = []
    cols = [c for c in columns(val_far, tasks) if c.key != "val"]
    for method in ordered_methods(results.methods, tasks):
        if method == reference:
            continue
        for variant in VARIANTS:
            for c in cols:
                diffs = []
                for f in results.folds:
                    a = fold_value(results.records[(method, f)], variant, c, val_far).value
                    b = fold_value(results.records[(reference, f)], variant, c, val_far).value
                    if a is not None and b is not None:
                        diffs.append(100.0 * (a - b))
                row = {"dataset": results.dataset, "method": method, "reference": reference, "variant": variant,
                       "metric": c.key, "folds": len(diffs), "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                       "confidence": confidence}
                if diffs:
                    row["mean"], row["ci_low"], row["ci_high"] = paired_bootstrap(
                        diffs, n_boot=n_boot, confidence=confidence, seed=seed)
                rows.append(row)
    return pd.DataFrame(rows)
