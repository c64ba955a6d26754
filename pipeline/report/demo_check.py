"""The demo's targets, checked at the end of ``make demo``: PASS or FAIL per target, with the measured value.

Targets (on the embedded demo data; last-epoch means over the demo folds):

- every demo dataset aligns at least 95 % of its images (MTCNN finds the generated faces);
- ``dynamic`` classifies each classification task (the expression) at least twice as often as chance (1 / number
  of classes) and verifies the pairs with accuracy ≥ 0.75 (the network learns);
- the raw-pixel PCA baseline verifies at most 0.65 of the pairs (the identities are not given away by pixels);
- every method of the run has a row with numbers in the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

__all__ = ["ALIGNED_MIN", "Check", "PIXEL_MAX", "VERIFICATION_MIN", "demo_checks", "format_checks"]

ALIGNED_MIN = 0.95
VERIFICATION_MIN = 0.75
CHANCE_FACTOR = 2.0
PIXEL_MAX = 0.65


@dataclass(frozen=True)
class Check:
    """One target: what, the measured value (``None`` when it could not be measured), the target, the verdict."""

    name: str
    value: float | None
    target: str
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _mean(summary: pd.DataFrame, method: str, column: str) -> float | None:
    rows = summary[(summary["method"] == method) & (summary["variant"] == "last")]
    if rows.empty or pd.isna(rows.iloc[0][f"{column}_mean"]):
        return None
    return float(rows.iloc[0][f"{column}_mean"]) / 100.0


def demo_checks(*, aligned_fractions: Mapping[str, float], summary: pd.DataFrame, methods: Sequence[str],
                n_classes: Mapping[str, int], reference: str = "dynamic", pixel: str = "pixel_pca") -> list[Check]:
    """Evaluate the demo targets.

    Args:
        aligned_fractions: demo dataset → fraction of its images aligned (the align stage's metrics).
        summary: :func:`pipeline.report.tables.summary_table` (percent).
        methods: the methods the run lists (each must have a row with a number).
        n_classes: classification task → its classes (chance = 1 / classes).
    """
    checks = [Check(f"alignment {name}", frac, f">= {ALIGNED_MIN:.2f}", frac >= ALIGNED_MIN)
              for name, frac in aligned_fractions.items()]
    for task, n in n_classes.items():
        chance = 1.0 / n
        acc = _mean(summary, reference, task)
        checks.append(Check(f"{reference} {task} accuracy", acc,
                            f">= {CHANCE_FACTOR:g} x chance = {CHANCE_FACTOR * chance:.3f}",
                            acc is not None and acc >= CHANCE_FACTOR * chance))
    if "verification_mean" in summary:
        ver = _mean(summary, reference, "verification")
        checks.append(Check(f"{reference} verification accuracy", ver, f">= {VERIFICATION_MIN:.2f}",
                            ver is not None and ver >= VERIFICATION_MIN))
        pix = _mean(summary, pixel, "verification")
        checks.append(Check(f"{pixel} verification accuracy", pix, f"<= {PIXEL_MAX:.2f}",
                            pix is not None and pix <= PIXEL_MAX))
    last = summary[summary["variant"] == "last"]
    empty = [m for m in methods
             if last[last["method"] == m].filter(like="_mean").dropna(axis=1).empty]
    checks.append(Check("every method in the table", float(len(methods) - len(empty)),
                        f"{len(methods)} methods with numbers" + (f" (missing: {', '.join(empty)})" if empty else ""),
                        not empty))
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check: ``PASS  dynamic verification accuracy  0.913  (>= 0.75)``."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        value = "n/a" if c.value is None else (f"{c.value:.0f}" if c.value.is_integer() and c.value > 1 else
                                                f"{c.value:.3f}")
        lines.append(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {value:>6}  ({c.target})")
    return "\n".join(lines)
