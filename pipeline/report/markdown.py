"""``tables.md``: the paper's table layout with our numbers (mean ± std over folds), the paper's and the gap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.report.paper import BENCHMARKS, PAPER
from pipeline.report.tables import columns, paper_keys
from pipeline.settings import TaskSetSettings

__all__ = ["ReportHeader", "format_cell", "format_interval", "render_markdown"]


@dataclass(frozen=True)
class ReportHeader:
    """What the numbers are: the dataset, whether it is the generated demo, the benchmark, the task set and the
    folds."""

    dataset: str
    tasks: TaskSetSettings
    demo: bool
    benchmark: str | None
    folds: tuple[int, ...]
    k: int
    reference: str
    confidence: float
    n_boot: int
    selection: str


def _num(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def format_cell(mean: float | None, std: float | None, floor: float | None = None) -> str:
    """``mean ± std`` in percent with two decimals; ``n/a (floor …)`` for an unmeasurable VAL; ``–`` when absent."""
    if _num(floor):
        return "n/a (no different-identity pairs)" if math.isinf(floor) else f"n/a (floor {floor:.2g})"
    if not _num(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}"


def format_interval(mean: float, low: float, high: float) -> str:
    """A paired difference in percentage points with its interval: ``+1.20 [−0.40, +2.80]``."""
    if not _num(mean):
        return "–"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def _paper(value: float | None, delta: float | None) -> tuple[str, str]:
    if not _num(value):
        return "not reported", ""
    return f"{value:.2f}", (f"{delta:+.2f}" if _num(delta) else "–")


def _data_line(h: ReportHeader) -> str:
    bench = BENCHMARKS.get(h.benchmark or "", None)
    if h.demo:
        line = (f"**Data: the embedded demo** (`{h.dataset}`: generated faces, not a real dataset). The numbers "
                "show that the pipeline runs and learns; they are not comparable to the paper's.")
        if bench:
            line += f" The paper's column holds its {bench} numbers, for the layout only."
        return line
    if bench:
        return f"**Data: {bench}** (`{h.dataset}`). The paper's column holds its {bench} numbers."
    return f"**Data: `{h.dataset}`**. The paper reports no numbers on this dataset."


def _main_table(summary: pd.DataFrame, variant: str, val_far: float, tasks: TaskSetSettings) -> list[str]:
    cols = columns(val_far, tasks)
    keys = paper_keys(cols)
    head = ["method", *(f"{c.title} (%)" for c in cols), *(h for key in keys for h in (f"paper {key}", "Δ"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary[summary["variant"] == variant].iterrows():
        cells = [r["label"]]
        for c in cols:
            floor = r["val_floor"] if c.key == "val" else None
            cells.append(format_cell(r[f"{c.key}_mean"], r[f"{c.key}_std"], floor))
        for key in keys:
            cells.extend(_paper(r[f"{key}_paper"], r[f"{key}_delta"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _difference_table(diffs: pd.DataFrame, variant: str, labels: dict[str, str], val_far: float,
                      tasks: TaskSetSettings) -> list[str]:
    keys = [(c.key, c.title) for c in columns(val_far, tasks) if c.key in set(diffs["metric"])]
    head = ["method", *(t for _, t in keys), "folds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    part = diffs[diffs["variant"] == variant]
    for method in dict.fromkeys(part["method"]):
        rows = part[part["method"] == method].set_index("metric")
        cells = [labels.get(method, method)]
        for key, _ in keys:
            r = rows.loc[key]
            cells.append(format_interval(r["mean"], r["ci_low"], r["ci_high"]))
        cells.append(str(int(rows["folds"].max())))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _selected_on(cols: Sequence) -> str:
    """Which epoch each column of the ``best`` table comes from."""
    parts = []
    if any(c.kind == "verification" for c in cols):
        parts.append("Verification columns at the epoch selected on verification accuracy")
    parts += [f"{c.key} at the epoch selected on {c.key} accuracy" for c in cols if c.kind == "classification"]
    parts += ["Rank-1 at the epoch selected on Rank-1" for c in cols if c.kind == "identification"]
    text = ", ".join(parts)
    return text[:1].upper() + text[1:]


def render_markdown(header: ReportHeader, summary: pd.DataFrame, diffs: pd.DataFrame, val_far: float,
                    figures: Sequence[tuple[str, str]]) -> str:
    """One dataset's ``tables.md`` section. ``figures`` are (title, path relative to the markdown file)."""
    tasks = header.tasks
    folds = ", ".join(str(f) for f in header.folds)
    labels = dict(zip(summary["method"], summary["label"], strict=False))
    best_label = {"test_fold": "selected on the test fold: the original's protocol, optimistic",
                  "val_subjects": "selected on held-out training subjects",
                  "last": "selection `last`: the same as the last epoch"}.get(header.selection, header.selection)
    out = [f"# {tasks.title}: `{header.dataset}`", "",
           _data_line(header), "",
           f"Folds {folds} of {header.k} (subject-disjoint). Values in %, mean ± std over folds (population std). "
           f"VAL@FAR={val_far:g} reads \"n/a (floor …)\" where a fold has too few different-identity pairs to "
           "measure that false accept rate. Δ = ours − paper. Per-fold values: `folds.csv`; this table: "
           "`tables.csv`; paired differences: `differences.csv`.", "",
           "## Last epoch", "", *_main_table(summary, "last", val_far, tasks), "",
           f"## Best epoch ({best_label})", "",
           f"{_selected_on(columns(val_far, tasks))}; the pretrained model and the pixel baseline have no epochs.",
           "", *_main_table(summary, "best", val_far, tasks), ""]
    if not diffs.empty:
        pct = f"{100 * header.confidence:g} %"
        out += [f"## Paired differences to `{header.reference}` (percentage points)", "",
                f"Mean over the same folds of (method − {header.reference}), with a {pct} percentile bootstrap "
                f"interval ({header.n_boot} resamples of the folds). The paper's claims rest on gaps of about half a "
                "point; with few folds the intervals are wide.", "",
                "Last epoch:", "", *_difference_table(diffs, "last", labels, val_far, tasks), "",
                "Best epoch:", "", *_difference_table(diffs, "best", labels, val_far, tasks), ""]
    notes = [(BENCHMARKS[b], m, key, v) for b, methods in PAPER.items() for m, cols in methods.items()
             for key, v in cols.items() if v.note and b == header.benchmark]
    if notes:
        out += ["Paper numbers:", ""]
        out += [f"- {bench}, {labels.get(m, m)}, {key}: {v.value:.2f} ({v.note})" for bench, m, key, v in notes]
        out.append("")
    if figures:
        out += ["## Figures", ""]
        out += [f"![{title}]({path})" for title, path in figures]
        out.append("")
    return "\n".join(out)
