"""The disjoint-datasets report: methods × task metrics, differences, the full-label rows, pseudo-label precision, and
the demo checks (docs/disjoint.md#the-report).

Inputs are plain data: each run's metrics record (``metrics/disjoint/fold<k>-<method>.json``, the fine-tuning
record's format), the full-label ``finetune`` records of the same folds, each pseudo-labelling run's refresh tables
(``pseudo/<epoch>.parquet``: pseudo label, weight factors, weight, selected, hidden truth) and ``steps.csv`` of the
runs the checks read. Values are fractions; differences and gaps are in percentage points.

- :func:`method_rows`: per method, per column (:func:`pipeline.report.tables.columns`), the mean ± std over folds
  (one fold: ``n = 1``, no std shown), and the gap to ``full_labels`` (the same images with the hidden labels: the
  upper bound);
- :func:`differences`: per method ≠ the reference, the paired difference over folds (a percentile bootstrap interval
  only with ≥ 3 folds);
- :func:`refresh_precision`: per pseudo-labelling run, refresh and task: how many images, the share with a target,
  and the precision against the hidden truth of all pseudo labels, of the selected ones, and of those the hard rule
  would select by confidence alone (the method's quantile over the confidence factor);
- :func:`demo_checks`: the issue's demo targets, measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.demo_check import Check
from pipeline.report.tables import Column, FoldValue, fold_value, paired_bootstrap, summarise

__all__ = ["PAPER_NOTE", "UPPER_BOUND", "DisjointHeader", "RefreshPrecision", "demo_checks", "differences",
           "method_rows", "refresh_precision", "render_disjoint_markdown", "variant_of"]

#: the method whose rows are the upper bound every other row is compared with
UPPER_BOUND = "full_labels"
#: the paper column: SA-MTL's tables are not in the seeds and could not be found offline
PAPER_NOTE = "not transcribed"
#: folds needed for a bootstrap interval of a paired difference
MIN_BOOTSTRAP_FOLDS = 3


def variant_of(selection: str) -> str:
    """The records' block a selection reports: ``last`` for ``last``, else the criterion's ``best`` epoch."""
    return "last" if selection == "last" else "best"


def method_rows(records: Mapping[tuple[str, int], Mapping[str, Any]], methods: Sequence[str], folds: Sequence[int],
                cols: Sequence[Column], variant: str, val_far: float) -> pd.DataFrame:
    """One row per method: ``method``, ``mode``, ``transfer``, ``weighting``, ``folds`` and, per column key ``c``,
    ``c_mean``, ``c_std``, ``c_n``, ``c_floor`` and ``c_gap`` (points below ``full_labels``; NaN without it)."""
    rows = []
    upper = {c.key: summarise([fold_value(dict(records[(UPPER_BOUND, f)]), variant, c, val_far) for f in folds])
             for c in cols} if UPPER_BOUND in methods else {}
    for m in methods:
        first = records[(m, folds[0])]
        row: dict[str, Any] = {"method": m, "mode": first.get("mode"), "transfer": first.get("transfer"),
                               "weighting": first.get("weighting"), "folds": len(folds)}
        for c in cols:
            cell = summarise([fold_value(dict(records[(m, f)]), variant, c, val_far) for f in folds])
            row[f"{c.key}_mean"] = cell.mean
            row[f"{c.key}_std"] = cell.std
            row[f"{c.key}_n"] = cell.n
            row[f"{c.key}_floor"] = cell.floor
            up = upper.get(c.key)
            row[f"{c.key}_gap"] = (100.0 * (cell.mean - up.mean)
                                   if up is not None and up.mean is not None and cell.mean is not None else None)
        rows.append(row)
    return pd.DataFrame(rows)


def differences(records: Mapping[tuple[str, int], Mapping[str, Any]], methods: Sequence[str], folds: Sequence[int],
                cols: Sequence[Column], reference: str, variant: str, val_far: float, *, n_boot: int,
                confidence: float, seed: int) -> pd.DataFrame:
    """Per method ≠ ``reference`` and column: ``mean`` of (method − reference) over the folds where both have a
    number, in points; ``ci_low``/``ci_high`` only with at least :data:`MIN_BOOTSTRAP_FOLDS` folds."""
    rows = []
    for m in methods:
        if m == reference:
            continue
        for c in cols:
            diffs = []
            for f in folds:
                a: FoldValue = fold_value(dict(records[(m, f)]), variant, c, val_far)
                b: FoldValue = fold_value(dict(records[(reference, f)]), variant, c, val_far)
                if a.value is not None and b.value is not None:
                    diffs.append(100.0 * (a.value - b.value))
            row = {"method": m, "reference": reference, "metric": c.key, "folds": len(diffs), "mean": np.nan,
                   "ci_low": np.nan, "ci_high": np.nan}
            if diffs:
                row["mean"] = float(np.mean(diffs))
                if len(diffs) >= MIN_BOOTSTRAP_FOLDS:
                    _, row["ci_low"], row["ci_high"] = paired_bootstrap(diffs, n_boot=n_boot, confidence=confidence,
                                                                        seed=seed)
            rows.append(row)
    return pd.DataFrame(rows, columns=["method", "reference", "metric", "folds", "mean", "ci_low", "ci_high"])


@dataclass(frozen=True)
class RefreshPrecision:
    """One refresh of one task in one run (fractions; ``None`` without hidden truth)."""

    method: str
    fold: int
    epoch: int
    task: str
    images: int
    coverage: float
    precision_all: float | None
    precision_selected: float | None
    precision_confidence: float | None
    selected: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _precision(part: pd.DataFrame) -> float | None:
    known = part[part["truth"] >= 0]
    return float((known["pseudo"] == known["truth"]).mean()) if len(known) else None


def refresh_precision(method: str, fold: int, tables: Mapping[int, pd.DataFrame], quantile: float
                      ) -> list[RefreshPrecision]:
    """Per refresh epoch (ascending) and task: the refresh's coverage and pseudo-label precision (module docstring);
    ``quantile``: the method's hard-selection quantile, applied to the confidence factor alone."""
    import torch

    from pipeline.disjoint.selection import quantile_threshold

    out = []
    for epoch in sorted(tables):
        table = tables[epoch]
        for task, part in table.groupby("task", sort=True):
            by_conf = None
            if "confidence" in part and len(part):
                conf = torch.tensor(part["confidence"].to_numpy(dtype=np.float64))
                keep = (conf > quantile_threshold(conf, quantile)).numpy()
                by_conf = _precision(part[keep]) if keep.any() else None
            out.append(RefreshPrecision(
                method=method, fold=fold, epoch=int(epoch), task=str(task), images=len(part),
                coverage=float(part["selected"].mean()) if len(part) else 0.0,
                precision_all=_precision(part), precision_selected=_precision(part[part["selected"]]),
                precision_confidence=by_conf, selected=int(part["selected"].sum())))
    return out


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}"


def demo_checks(rows: pd.DataFrame, precision: Sequence[RefreshPrecision], steps: Mapping[str, pd.DataFrame],
                task_names: Sequence[str], n_classes: Mapping[str, int], cols: Sequence[Column]) -> list[Check]:
    """The demo's targets (docs/disjoint.md#the-demo), measured on the report's numbers.

    - ``all_in_one``: each classification accuracy ≥ 2 × chance, verification ≥ 0.75;
    - ``sa_mtl_hard``'s last refresh: the precision of the pseudo labels kept by confidence alone ≥ the precision of
      all pseudo labels + 5 points (the precision under the full product of weights is printed beside it);
    - ``full_labels`` is in the table;
    - ``sa_mtl_dynamic``'s ``steps.csv`` has a presence flag per task and only finite weights.
    """
    checks: list[Check] = []
    by_method = {r["method"]: r for r in rows.to_dict("records")}
    aio = by_method.get("all_in_one")
    if aio is not None:
        for c in cols:
            if c.kind == "classification":
                chance = 1.0 / n_classes[c.key]
                v = aio[f"{c.key}_mean"]
                checks.append(Check(f"all_in_one {c.key} accuracy", v,
                                    f">= 2 x chance (1/{n_classes[c.key]}) = {2 * chance:.3f}",
                                    v is not None and v >= 2 * chance))
            elif c.kind == "verification":
                v = aio[f"{c.key}_mean"]
                checks.append(Check("all_in_one verification accuracy", v, ">= 0.75", v is not None and v >= 0.75))
    hard = [p for p in precision if p.method == "sa_mtl_hard"]
    if hard:
        last_epoch = max(p.epoch for p in hard)
        for p in (p for p in hard if p.epoch == last_epoch):
            ok = (p.precision_confidence is not None and p.precision_all is not None
                  and p.precision_confidence >= p.precision_all + 0.05)
            checks.append(Check(
                f"sa_mtl_hard epoch {p.epoch} {p.task}: precision of the pseudo labels kept by confidence alone",
                p.precision_confidence,
                f">= all pseudo labels {_points(p.precision_all)} % + 5 points; under the full product of weights: "
                f"{_points(p.precision_selected)} % of {p.selected}", ok))
    checks.append(Check("full_labels (the upper bound) is in the table", float(UPPER_BOUND in by_method), "present",
                        UPPER_BOUND in by_method))
    dyn = steps.get("sa_mtl_dynamic")
    if dyn is not None:
        flags = all(f"present_{t}" in dyn for t in task_names)
        weights = dyn[[f"weight_{t}" for t in task_names]].to_numpy(dtype=np.float64)
        finite = bool(np.isfinite(weights).all())
        checks.append(Check("sa_mtl_dynamic steps.csv: presence flags and finite weights", float(flags and finite),
                            f"{len(dyn)} steps, flags {'present' if flags else 'missing'}, weights "
                            f"{'finite' if finite else 'NOT finite'}", flags and finite))
    return checks


@dataclass(frozen=True)
class DisjointHeader:
    """What the report's heading says: the view, its dataset, the folds, whether it is demo data, the selection."""

    view: str
    dataset: str
    folds: tuple[int, ...]
    demo: bool
    selection: str
    reference: str


def _cell(row: Mapping[str, Any], key: str) -> str:
    mean, std, n, floor = (row.get(f"{key}_{s}") for s in ("mean", "std", "n", "floor"))
    if floor is not None and not (isinstance(floor, float) and np.isnan(floor)):
        return "n/a (floor)"
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    text = f"{100.0 * mean:.2f}" if (n or 0) < 2 else f"{100.0 * mean:.2f} ± {100.0 * std:.2f}"
    gap = row.get(f"{key}_gap")
    if gap is not None and not (isinstance(gap, float) and np.isnan(gap)) and row.get("method") != UPPER_BOUND:
        text += f" ({gap:+.2f})"
    return text


def _epoch_words(selection: str) -> str:
    return {"last": "the last", "val_subjects": "the best on held-out training subjects (selection val_subjects)"}.get(
        selection, f"the best on the test fold (selection {selection}: the original's, optimistic)")


def render_disjoint_markdown(header: DisjointHeader, rows: pd.DataFrame, finetune_rows: pd.DataFrame,
                             diffs: pd.DataFrame, precision: Sequence[RefreshPrecision], cols: Sequence[Column],
                             checks: Sequence[Check]) -> str:
    """``reports/disjoint_tables.md``."""
    from pipeline.report.demo_check import format_checks

    folds = ", ".join(map(str, header.folds))
    n = len(header.folds)
    lines = [f"# Multi-task learning on disjoint datasets (SA-MTL): view `{header.view}` of `{header.dataset}`", ""]
    data = ("These are synthetic demo numbers (the embedded demo halved into an identity-only and an expression-only "
            "source), not SA-MTL's datasets." if header.demo else f"**Data:** `{header.dataset}`.")
    lines += [data, "",
              f"Folds: {folds} (n = {n}{': no interval' if n < MIN_BOOTSTRAP_FOLDS else ''}). Epoch: "
              f"{_epoch_words(header.selection)}. "
              "Percent; in parentheses the gap to `full_labels` (the same images with the hidden labels: the upper "
              f"bound), in points. The paper's numbers: {PAPER_NOTE} (SA-MTL's tables are not in the project's "
              "sources and could not be found offline).", ""]
    titles = [c.title for c in cols]
    lines += ["| method | mode | transfer | weighting | " + " | ".join(titles) + " | paper |",
              "|---|---|---|---|" + "---|" * len(titles) + "---|"]
    for r in rows.to_dict("records"):
        lines.append(f"| {r['method']} | {r['mode']} | {r['transfer']} | {r['weighting']} | "
                     + " | ".join(_cell(r, c.key) for c in cols) + f" | {PAPER_NOTE} |")
    if len(finetune_rows):
        lines += ["", "Full-label fine-tuning of the same folds (stage `finetune`: every image labelled for both "
                  "tasks), at the epoch this table reports (the FR+FER table selects by its own "
                  "`finetune.common.selection`):", "",
                  "| finetune method | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
        for r in finetune_rows.to_dict("records"):
            lines.append(f"| {r['method']} | " + " | ".join(_cell(r, c.key) for c in cols) + " |")
    if len(diffs):
        lines += ["", f"Paired differences to `{header.reference}` (points; mean over folds"
                  + (", percentile bootstrap interval" if n >= MIN_BOOTSTRAP_FOLDS else "; no interval below "
                     f"{MIN_BOOTSTRAP_FOLDS} folds") + "):", "",
                  "| method | " + " | ".join(c.title for c in cols) + " |", "|---|" + "---|" * len(cols)]
        for m, part in diffs.groupby("method", sort=False):
            cells = []
            for c in cols:
                d = part[part["metric"] == c.key]
                if d.empty or np.isnan(d.iloc[0]["mean"]):
                    cells.append("–")
                elif np.isnan(d.iloc[0]["ci_low"]):
                    cells.append(f"{d.iloc[0]['mean']:+.2f}")
                else:
                    cells.append(f"{d.iloc[0]['mean']:+.2f} [{d.iloc[0]['ci_low']:+.2f}, {d.iloc[0]['ci_high']:+.2f}]")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if precision:
        lines += ["", "Pseudo labels per refresh, against the hidden labels (precision in percent; `targets`: the "
                  "share of the refreshed images given a target; `by confidence`: the labels the hard rule keeps by "
                  "the confidence factor alone, at the method's quantile):", "",
                  "| method | fold | epoch | task | images | targets | precision: all | selected | by confidence |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in precision:
            lines.append(f"| {p.method} | {p.fold} | {p.epoch} | {p.task} | {p.images} | {100 * p.coverage:.1f} | "
                         f"{_points(p.precision_all)} | {_points(p.precision_selected)} | "
                         f"{_points(p.precision_confidence)} |")
    if checks:
        lines += ["", "Demo targets (reports/disjoint_demo_check.txt):", "", "```", format_checks(checks), "```"]
    return "\n".join(lines) + "\n"
