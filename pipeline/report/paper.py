"""The numbers the FR+FER paper reports (Ming et al. 2019, arXiv 1911.03281; docs/method.md §8), in percent.

Only summary numbers are known (the full tables are not available offline), so most cells of the reproduced table
have no paper value and the report says "not reported". Keys: benchmark → method name (as in
``finetune.methods``) → column key (``verification``: verification accuracy on the expression pairs,
``expression``: expression recognition accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BENCHMARKS", "PAPER", "PaperValue", "benchmark_of", "paper_value"]


@dataclass(frozen=True)
class PaperValue:
    """One reported number (percent) and how the paper states it."""

    value: float
    note: str = ""


#: benchmark key → display name
BENCHMARKS: dict[str, str] = {"ckplus": "CK+", "oulu_casia": "Oulu-CASIA"}

PAPER: dict[str, dict[str, dict[str, PaperValue]]] = {
    "ckplus": {
        "dynamic": {"verification": PaperValue(99.00), "expression": PaperValue(99.50)},
        "static": {"verification": PaperValue(98.50), "expression": PaperValue(99.11)},
        "single_identity": {"verification": PaperValue(98.50)},
        "pretrained": {"verification": PaperValue(92.0, "approximate (the paper: about 92 on CK+, 99 on LFW)")},
    },
    "oulu_casia": {
        "dynamic": {"expression": PaperValue(89.60, "equal to the best baseline, which the summary does not name")},
    },
}

#: dataset reader → benchmark whose paper numbers apply
_READER_BENCHMARK = {"ckplus": "ckplus", "oulu_casia": "oulu_casia"}


def benchmark_of(reader: str) -> str | None:
    """The benchmark of a dataset read by ``reader`` (``None``: the paper reports nothing on that layout)."""
    return _READER_BENCHMARK.get(reader)


def paper_value(benchmark: str | None, method: str, column: str) -> PaperValue | None:
    """The paper's number for (benchmark, method, column), or ``None`` when the paper does not report one."""
    if benchmark is None:
        return None
    return PAPER.get(benchmark, {}).get(method, {}).get(column)
