"""The caricature paper's tables from the caricature runs' metrics: Table I (CaVI), the README's cross-modal row,
Tables II–IV (WebCaricature), the headline claim, and their markdown, CSV and JSON forms.

Inputs: the metrics files of the ``cari_train@<dataset>-<method>`` and ``cari_pixel@<dataset>`` stages
(``metrics/cari/<d>/<method>.json``: ``{dataset, method, selection, data, last: M, best: {selected_on, <criterion>:
M...}}``), read for exactly the methods the params list (:func:`read_cari_results`), never by globbing.

Which epoch: under ``cari.common.selection: test_fold`` the original reports each metric at its own best epoch on
the test split (optimistic), so a column is read from ``best[<criterion>]``: the verification columns from the
epoch selected on verification accuracy, visual-id from the one selected on the visual task, cari-id from the
caricature task's, Rank-k from the one selected on Rank-1 (``identification``); under ``last`` every column is the
last epoch's. Both variants are computed (``best``, ``last``); the pixel baseline has no epochs (its ``best`` blocks
are its only evaluation).

The task set decides which metric keys are read (:class:`Roles`): the verified task gives ``verification``, the
task labelled ``identity_photos`` visual-id (``<task>_accuracy``) and c2v (``<task>_cross_accuracy``), the task
labelled ``identity_caricatures`` cari-id and v2c.

The tables (:class:`CariTable`): per dataset, Table I and the cross-modal table on a CaVI-protocol dataset
(``datasets.<d>.protocol.kind: cavi``), Tables II–IV on a WebCaricature-protocol one. Each holds the literature
rows the paper quotes (not reproduced), the pixel baseline, every run method with the paper's number beside it
(:mod:`pipeline.report.cari_paper`) and Δ = ours − paper in points, and where the original code computed the paper's
number differently, that number as "original code": VAL on the training folds (Table II, ``val_train_folds``) and
the strided Rank-n (Tables III–IV, ``rank_strided``); "–" when the metrics do not hold them.

All numbers are percent (the metrics' fractions × 100).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report.cari_paper import (
    CARI_SOURCE,
    CROSS_MODAL,
    IDENTIFICATION,
    LITERATURE_SOURCES,
    TABLE_I,
    TABLE_II,
    TABLE_II_FARS,
    PaperNumber,
    PaperTable,
    val_column,
)
from pipeline.report.tables import PIXEL_METHOD, paired_bootstrap, read_run_records
from pipeline.settings import TaskSetSettings

__all__ = ["BOOTSTRAP", "CONFIDENCE", "CariTable", "Claim", "DatasetHeader", "Roles", "TableRow", "Value", "accuracy",
           "cari_tables", "claims", "csv_rows", "format_paper", "identification", "method_label", "read_cari_results",
           "render_cari_markdown", "selected_variant", "table_record", "val_entry"]

#: the paired bootstrap of the claims over identification splits (the FR+FER report's defaults)
BOOTSTRAP = 10000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
#: the variants: ``best`` (each column at its criterion's selected epoch) and ``last``
VARIANTS = ("best", "last")
PROTOCOL_NAMES = {"cavi": "CaVI", "webcaricature": "WebCaricature"}
#: identification direction → (table key, the paper's table number, what it measures)
DIRECTIONS = {"C2P": ("table3", "III", "caricature → photo (C2P) identification"),
              "P2C": ("table4", "IV", "photo → caricature (P2C) identification")}


def selected_variant(selection: str) -> str:
    """The variant the tables report under ``cari.common.selection``: ``best`` for ``test_fold``, else ``last``."""
    return "best" if selection == "test_fold" else "last"


def variant_label(variant: str) -> str:
    """How the markdown names a variant."""
    return "best epoch on the test split (the original's, optimistic)" if variant == "best" else "last epoch"


def method_label(method: str, paper: PaperTable) -> str:
    """A method's row label in a table: ``dynamic — Ours (Multi-task)`` (the paper's row), ``uncertainty (ours
    only)`` where the paper has no such row, ``raw-pixel PCA (ours only)``."""
    if method == PIXEL_METHOD:
        return "raw-pixel PCA (ours only)"
    row = paper.runs.get(method)
    return f"{method} — {row.label}" if row else f"{method} (ours only)"


# ------------------------------------------------------------------------------------------------------ reading
def read_cari_results(metrics_dir: Path, dataset: str, methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``<metrics_dir>/<method>.json`` of every listed method (nothing else), by method.

    Raises:
        DatasetError: a file is missing or unreadable, or it belongs to another dataset or method (one line).
    """
    return read_run_records(metrics_dir, {m: (f"{m}.json", {"dataset": dataset, "method": m}) for m in methods})


@dataclass(frozen=True)
class Roles:
    """The tasks of the caricature task set by part: the verified task, the photo (visual) identification task and
    the caricature identification task (None: the task set has none)."""

    verification: str | None
    visual: str | None
    cari: str | None

    @classmethod
    def of(cls, tasks: TaskSetSettings) -> Roles:
        verified = tasks.evaluated("verification")
        by_label = {tasks.tasks[t].label: t for t in tasks.names}
        return cls(verified[0] if verified else None, by_label.get("identity_photos"),
                   by_label.get("identity_caricatures"))


def block(record: Mapping[str, Any], criterion: str | None, variant: str) -> dict[str, Any] | None:
    """The evaluation ``M`` a column is read from: ``last``, or ``best[criterion]`` (None when absent)."""
    if variant == "last":
        return record.get("last")
    if variant != "best":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return None if criterion is None else (record.get("best") or {}).get(criterion)


@dataclass(frozen=True)
class Value:
    """One measured cell in percent: ``mean`` ± ``std`` (None: not measured), or not measurable (``floor``: the
    FAR floor of a VAL whose target is below it); ``epoch``: the epoch it was read at."""

    mean: float | None
    std: float | None = None
    floor: float | None = None
    epoch: int | None = None


NONE = Value(None)


def _pct(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * float(x)


def accuracy(record: Mapping[str, Any], criterion: str | None, key: str | None, variant: str) -> Value:
    """A scalar accuracy ``M[key]`` (a fraction) at the column's epoch."""
    m = block(record, criterion, variant)
    if not m or key is None:
        return NONE
    return Value(_pct(m.get(key)), epoch=m.get("epoch"))


def val_entry(m: Mapping[str, Any] | None, far: float) -> dict[str, Any] | None:
    """``M["verification"]["val_at_far"]``'s entry of the FAR target ``far`` (its key is
    :func:`pipeline.evaluation.verification.far_key` of the target; matched by value), None when absent."""
    for key, entry in (((m or {}).get("verification") or {}).get("val_at_far") or {}).items():
        if float(key) == far:
            return entry
    return None


def val_at_far(record: Mapping[str, Any], far: float, variant: str) -> tuple[Value, Value]:
    """VAL ± std at ``far`` on the test folds (ours), and on the training folds (the original code's), at the epoch
    selected on verification."""
    m = block(record, "verification", variant)
    entry = val_entry(m, far)
    if not entry:
        return NONE, NONE
    epoch = m.get("epoch")
    if not entry.get("measurable", True):
        floor = entry.get("far_floor")
        lost = Value(None, floor=math.inf if floor is None else float(floor), epoch=epoch)
        return lost, lost
    ours = Value(_pct(entry.get("val")), _pct(entry.get("val_std")), epoch=epoch)
    original = (Value(_pct(entry["val_train_folds"]), _pct(entry.get("val_train_folds_std")), epoch=epoch)
                if entry.get("val_train_folds") is not None else NONE)
    return ours, original


def identification(record: Mapping[str, Any], direction: str, rank: int, variant: str
                   ) -> tuple[Value, Value, list[float] | None]:
    """Rank-``rank`` mean ± std over the direction's splits (ours), the original code's strided Rank-n, and our
    per-split values (for paired differences), at the epoch selected on Rank-1."""
    m = block(record, "identification", variant)
    d = (((m or {}).get("identification") or {}).get("directions") or {}).get(direction)
    if not d:
        return NONE, NONE, None
    epoch = m.get("epoch")
    r = (d.get("rank") or {}).get(str(rank))
    ours = NONE if not r else Value(_pct(r.get("mean")), _pct(r.get("std")), epoch=epoch)
    s = (d.get("rank_strided") or {}).get(str(rank))
    strided = NONE if not s or s.get("mean") is None else Value(_pct(s["mean"]), _pct(s.get("std")), epoch=epoch)
    per_split = None if not r or r.get("per_split") is None else [float(x) for x in r["per_split"]]
    return ours, strided, per_split


# ------------------------------------------------------------------------------------------------------ tables
@dataclass
class TableRow:
    """One row: ``kind`` ``literature`` (the paper's quote, not reproduced), ``pixel``, ``run`` (a run method) or
    ``not_run`` (a method the paper reports that ``cari.run_methods`` leaves out: its paper numbers only);
    ``ours`` and ``original`` (the original code's way of computing, where the table has that group) by column, and
    the paper's numbers."""

    key: str
    label: str
    kind: str
    ours: dict[str, Value] = field(default_factory=dict)
    original: dict[str, Value] = field(default_factory=dict)
    paper: dict[str, PaperNumber] = field(default_factory=dict)
    paper_label: str | None = None

    def delta(self, column: str, original: bool = False) -> float | None:
        """ours − paper in points (or the original code's value − paper), None unless both exist."""
        v = (self.original if original else self.ours).get(column, NONE)
        p = self.paper.get(column)
        return None if p is None or v.mean is None else v.mean - p.value


@dataclass
class CariTable:
    """One table of one dataset in one variant."""

    key: str
    title: str
    dataset: str
    variant: str
    columns: list[tuple[str, str]]
    rows: list[TableRow]
    original_title: str | None = None
    notes: list[str] = field(default_factory=list)


def _literature(table: PaperTable) -> list[TableRow]:
    return [TableRow(r.key, f"{r.label} (quoted, not reproduced)", "literature", paper=dict(r.values),
                     paper_label=r.label) for r in table.literature]


def _runs(records: Mapping[str, Mapping[str, Any]], methods: Sequence[str], table: PaperTable,
          measure: Any) -> list[TableRow]:
    """The pixel row and one row per run method (``measure(record) -> (ours, original)``), the paper's beside."""
    rows = []
    for method in [*[m for m in methods if m != PIXEL_METHOD], *([PIXEL_METHOD] if PIXEL_METHOD in methods else [])]:
        ours, original = measure(records[method])
        paper = table.runs.get(method)
        rows.append(TableRow(method, method_label(method, table), "pixel" if method == PIXEL_METHOD else "run", ours,
                             original, dict(paper.values) if paper else {}, paper.label if paper else None))
    for method, paper in table.runs.items():  # every paper number stays in the table, also of a method not run
        if method not in methods:
            rows.append(TableRow(method, f"{method_label(method, table)} (not run here)", "not_run",
                                 paper=dict(paper.values), paper_label=paper.label))
    return rows


def _epoch_note(variant: str, parts: Sequence[str]) -> str:
    if variant == "last":
        return "Every column at the last epoch."
    return ("Each column at its own best epoch on the test split (the original's protocol, optimistic): "
            + "; ".join(parts) + ". The pixel baseline has no epochs.")


def table_i(dataset: str, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str], roles: Roles,
            variant: str) -> CariTable:
    """Table I (a CaVI-protocol dataset): Cari-Visual verification accuracy, Visual-id, Cari-id."""
    cols = [("cari_visual", "Cari-Visual"), ("visual_id", "Visual-id"), ("cari_id", "Cari-id")]

    def measure(r: Mapping[str, Any]) -> tuple[dict[str, Value], dict[str, Value]]:
        return {"cari_visual": accuracy(r, "verification", "verification_accuracy", variant),
                "visual_id": accuracy(r, roles.visual, roles.visual and f"{roles.visual}_accuracy", variant),
                "cari_id": accuracy(r, roles.cari, roles.cari and f"{roles.cari}_accuracy", variant)}, {}

    notes = [_epoch_note(variant, ["Cari-Visual at the epoch selected on verification accuracy",
                                   f"Visual-id on {roles.visual}'s", f"Cari-id on {roles.cari}'s"]),
             "One split (CaVI's protocol): no ± on our numbers or the paper's. A single-task run trains one branch; "
             "its other heads are evaluated as initialised (shown for completeness, the paper prints –).",
             f"Literature rows: {LITERATURE_SOURCES['cavi']}."]
    return CariTable("table1", "Table I: CaVI accuracy (%)", dataset, variant, cols,
                     _literature(TABLE_I) + _runs(records, methods, TABLE_I, measure), notes=notes)


def cross_modal_table(dataset: str, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str], roles: Roles,
                      variant: str) -> CariTable:
    """The README's cross-modal row: each head on the other modality (c2v: the visual head on caricatures, v2c: the
    caricature head on photos), for every method."""
    cols = [("c2v", "c2v: visual head on caricatures"), ("v2c", "v2c: caricature head on photos")]

    def measure(r: Mapping[str, Any]) -> tuple[dict[str, Value], dict[str, Value]]:
        return {"c2v": accuracy(r, roles.visual, roles.visual and f"{roles.visual}_cross_accuracy", variant),
                "v2c": accuracy(r, roles.cari, roles.cari and f"{roles.cari}_cross_accuracy", variant)}, {}

    notes = [_epoch_note(variant, [f"c2v at the epoch selected on {roles.visual} accuracy",
                                   f"v2c at the one selected on {roles.cari} accuracy"]),
             "The paper's numbers are the caricature repository's README: the visual model (single_visual) on "
             "caricatures, the caricature model (single_cari) on photos."]
    return CariTable("cross_modal", "Cross-modal accuracy (%), the README's check", dataset, variant, cols,
                     _runs(records, methods, CROSS_MODAL, measure), notes=notes)


def table_ii(dataset: str, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str], variant: str
             ) -> CariTable:
    """Table II (a WebCaricature-protocol dataset): VAL ± std at FAR 0.1 % and 1 %, ours (test folds) and the
    original code's (training folds)."""
    cols = [(val_column(f), f"VAL@FAR={100 * f:g}%") for f in TABLE_II_FARS]

    def measure(r: Mapping[str, Any]) -> tuple[dict[str, Value], dict[str, Value]]:
        ours, original = {}, {}
        for f in TABLE_II_FARS:
            ours[val_column(f)], original[val_column(f)] = val_at_far(r, f, variant)
        return ours, original

    notes = [_epoch_note(variant, ["every column at the epoch selected on verification accuracy"]),
             "± = std over the verification protocol's internal folds, as the paper's. Ours: VAL on each test fold "
             "(`verification.val_at_far.<far>.val`); original code (training folds): VAL measured on the training "
             "folds that chose the threshold, the caricature code's number and so the paper's (docs/method.md §6.2, "
             "`val_train_folds`). \"n/a (floor …)\": too few different-identity pairs to measure that FAR.",
             f"Literature rows: {LITERATURE_SOURCES['webcaricature']}."]
    return CariTable("table2", "Table II: WebCaricature verification, VAL (%) ± std", dataset, variant, cols,
                     _literature(TABLE_II) + _runs(records, methods, TABLE_II, measure),
                     original_title="original code (training folds)", notes=notes)


def table_identification(dataset: str, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                         direction: str, variant: str) -> CariTable:
    """Table III (C2P) or IV (P2C): Rank-1 and Rank-10 mean ± std over the splits, ours and the original code's
    strided Rank-n."""
    key, number, what = DIRECTIONS[direction]
    cols = [("rank1", "Rank-1"), ("rank10", "Rank-10")]

    def measure(r: Mapping[str, Any]) -> tuple[dict[str, Value], dict[str, Value]]:
        ours, original = {}, {}
        for key, k in (("rank1", 1), ("rank10", 10)):
            ours[key], original[key], _ = identification(r, direction, k, variant)
        return ours, original

    notes = [_epoch_note(variant, ["every column at the epoch selected on Rank-1 (the mean over C2P and P2C)"]),
             "± = std over the probe/gallery splits. Original code (strided): the Rank-n of the original evaluation "
             "script as coded, whose hit test strides through all probes' candidates (docs/method.md §6.6): the "
             "paper's Rank-10 came from it; its Rank-1 equals ours.",
             f"Literature rows: {LITERATURE_SOURCES['webcaricature']}."]
    return CariTable(key, f"Table {number}: WebCaricature {what}, Rank-k (%) ± std", dataset, variant, cols,
                     _literature(IDENTIFICATION[direction]) + _runs(records, methods, IDENTIFICATION[direction],
                                                                    measure),
                     original_title="original code (strided)", notes=notes)


def cari_tables(dataset: str, protocol: str, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                roles: Roles, variant: str) -> list[CariTable]:
    """The tables of one dataset for its protocol (``cavi``: Table I and the cross-modal table; ``webcaricature``:
    Tables II–IV) in one variant."""
    if protocol == "cavi":
        return [table_i(dataset, records, methods, roles, variant),
                cross_modal_table(dataset, records, methods, roles, variant)]
    if protocol == "webcaricature":
        return [table_ii(dataset, records, methods, variant),
                *(table_identification(dataset, records, methods, d, variant) for d in DIRECTIONS)]
    raise ValueError(f"unknown caricature protocol {protocol!r} (cavi | webcaricature)")


# ------------------------------------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Claim:
    """``method`` − ``other`` on one metric, in points: over one split (``mean`` only) or paired over several
    (``mean`` with a bootstrap interval ``low``..``high``); ``paper``: the paper's difference."""

    dataset: str
    metric: str
    method: str
    other: str
    splits: int
    mean: float | None
    low: float | None = None
    high: float | None = None
    paper: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _paper_diff(table: PaperTable, method: str, other: str, column: str) -> float | None:
    a, b = (table.runs.get(m) for m in (method, other))
    if a is None or b is None or column not in a.values or column not in b.values:
        return None
    return round(a.values[column].value - b.values[column].value, 6)


def claims(dataset: str, protocol: str, records: Mapping[str, Mapping[str, Any]], roles: Roles, variant: str, *,
           n_boot: int = BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> list[Claim]:
    """The paper's headline claim as measured (in ``variant``): on a CaVI-protocol dataset dynamic − naive_dynamic and
    dynamic − single_cari on cari-id (the paper: 85.61 vs 75.80 vs 78.20; one split: the point difference only); on
    a WebCaricature-protocol dataset dynamic − naive_dynamic and dynamic − single_verif on each direction's Rank-1,
    paired over the identification splits with a percentile bootstrap interval."""
    out = []
    if protocol == "cavi":
        for other in ("naive_dynamic", "single_cari"):
            if "dynamic" not in records or other not in records:
                continue
            key = roles.cari and f"{roles.cari}_accuracy"
            a, b = (accuracy(records[m], roles.cari, key, variant).mean for m in ("dynamic", other))
            mean = None if a is None or b is None else a - b
            out.append(Claim(dataset, "cari_id", "dynamic", other, 1, mean,
                             paper=_paper_diff(TABLE_I, "dynamic", other, "cari_id"),
                             note="one split: the point difference only, no interval"))
    elif protocol == "webcaricature":
        for direction in DIRECTIONS:
            for other in ("naive_dynamic", "single_verif"):
                if "dynamic" not in records or other not in records:
                    continue
                _, _, a = identification(records["dynamic"], direction, 1, variant)
                _, _, b = identification(records[other], direction, 1, variant)
                paper = _paper_diff(IDENTIFICATION[direction], "dynamic", other, "rank1")
                if a is None or b is None or len(a) != len(b) or not a:
                    out.append(Claim(dataset, f"{direction}_rank1", "dynamic", other, 0, None, paper=paper,
                                     note="not measured"))
                    continue
                diffs = 100.0 * (np.asarray(a) - np.asarray(b))
                if len(diffs) == 1:
                    out.append(Claim(dataset, f"{direction}_rank1", "dynamic", other, 1, float(diffs[0]),
                                     paper=paper, note="one split: the point difference only, no interval"))
                    continue
                mean, low, high = paired_bootstrap(diffs, n_boot=n_boot, confidence=confidence, seed=seed)
                out.append(Claim(dataset, f"{direction}_rank1", "dynamic", other, len(diffs), mean, low, high,
                                 paper=paper, note=f"paired over {len(diffs)} splits, {100 * confidence:g} % "
                                                   f"percentile bootstrap ({n_boot} resamples)"))
    return out


# ------------------------------------------------------------------------------------------------------ output
def _num(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def format_value(v: Value) -> str:
    """``mean ± std`` (two decimals), ``mean`` without a std, ``n/a (floor …)`` when unmeasurable, ``–`` when
    absent."""
    if _num(v.floor):
        return "n/a (no different-identity pairs)" if math.isinf(v.floor) else f"n/a (floor {v.floor:.2g})"
    if not _num(v.mean):
        return "–"
    return f"{v.mean:.2f}" if v.std is None else f"{v.mean:.2f} ± {v.std:.2f}"


def format_paper(p: PaperNumber | None) -> str:
    if p is None:
        return "–"
    return f"{p.value:.2f}" if p.std is None else f"{p.value:.2f} ± {p.std:.2f}"


def format_delta(d: float | None) -> str:
    return "–" if d is None else f"{d:+.2f}"


def render_table(t: CariTable) -> list[str]:
    """One table in markdown: ours (and the original code's group), then per column the paper and Δ."""
    head = ["method", *(f"{title} (ours)" for _, title in t.columns)]
    if t.original_title:
        head += [f"{title}, {t.original_title}" for _, title in t.columns]
    for _, title in t.columns:
        head += [f"paper {title}", "Δ"]
    if t.original_title:
        head += [f"Δ {title}, original code" for _, title in t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        absent = {"literature": "not reproduced", "not_run": "not run"}.get(r.kind)
        cells = [r.label]
        cells += [absent or format_value(r.ours.get(c, NONE)) for c, _ in t.columns]
        if t.original_title:
            cells += ["–" if absent else format_value(r.original.get(c, NONE)) for c, _ in t.columns]
        for c, _ in t.columns:
            cells += [format_paper(r.paper.get(c)), format_delta(r.delta(c))]
        if t.original_title:
            cells += [format_delta(r.delta(c, original=True)) for c, _ in t.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class DatasetHeader:
    """What one dataset's numbers are: its name, protocol, whether it is the generated demo, the selection."""

    dataset: str
    protocol: str
    demo: bool
    selection: str


def _data_line(h: DatasetHeader) -> str:
    name = PROTOCOL_NAMES.get(h.protocol, h.protocol)
    if h.demo:
        return (f"**Data: the embedded caricature demo** (`{h.dataset}`: synthetic photos and caricatures generated "
                f"in {name}'s layout and protocol, source kind `demo_caricature`). **These are synthetic demo "
                "numbers, not CaVI/WebCaricature**: they show that the pipeline runs and learns; the paper's "
                f"columns hold its {name} numbers for the layout only.")
    return (f"**Data: {name}** (`{h.dataset}`, the {name} protocol). The paper's columns hold its {name} numbers; "
            "Δ = ours − paper in points.")


def _claim_lines(cs: Sequence[Claim]) -> list[str]:
    if not cs:
        return []
    lines = ["## The headline claim, as measured", "",
             "The paper: dynamic beats naive dynamic and the single-task model on the hard task (CaVI cari-id 85.61 "
             "vs 75.80 vs 78.20; WebCaricature Rank-1 in Tables III-IV).", "",
             "| difference | ours (points) | interval | splits | paper (points) | note |", "|---|---|---|---|---|---|"]
    for c in cs:
        interval = "–" if c.low is None else f"[{c.low:+.2f}, {c.high:+.2f}]"
        lines.append(f"| {c.metric}: {c.method} − {c.other} | {format_delta(c.mean)} | {interval} | {c.splits} | "
                     f"{format_delta(c.paper)} | {c.note} |")
    return [*lines, ""]


def render_cari_markdown(h: DatasetHeader, tables: Mapping[str, Sequence[CariTable]], claim_list: Sequence[Claim],
                         figures: Sequence[tuple[str, str]], checks_text: str | None = None) -> str:
    """One dataset's section of ``cari_tables.md``: the data line, the tables in the selected variant (then in the
    last epoch when that is another), the claim, the figures. ``tables``: variant → tables."""
    selected = selected_variant(h.selection)
    out = [f"# Caricature-visual recognition: `{h.dataset}` ({PROTOCOL_NAMES.get(h.protocol, h.protocol)} protocol)",
           "", _data_line(h), "",
           f"Values in %. Selection `{h.selection}`: the tables report the {variant_label(selected)}. Δ = ours − "
           "paper in points, where both exist. Literature rows are the paper's quotes of other work: not reproduced "
           f"here. Paper numbers: {CARI_SOURCE}.", ""]
    for t in tables.get(selected, ()):
        out += [f"## {t.title}", "", *render_table(t), "", *(f"- {n}" for n in t.notes), ""]
    out += _claim_lines(claim_list)
    if selected != "last":
        out += ["## The same tables at the last epoch (no selection on the test split)", ""]
        for t in tables.get("last", ()):
            out += [f"### {t.title}, last epoch", "", *render_table(t), ""]
    if figures:
        out += ["## Figures", ""] + [f"![{title}]({path})" for title, path in figures] + [""]
    if checks_text:
        out += ["## Demo checks", "", "```", checks_text.rstrip(), "```", ""]
    return "\n".join(out)


def _plain(v: Value) -> dict[str, Any]:
    return {"mean": None if v.mean is None else round(v.mean, 4), "std": None if v.std is None else round(v.std, 4),
            **({"floor": None if math.isinf(v.floor) else v.floor} if v.floor is not None else {})}


def table_record(t: CariTable) -> dict[str, Any]:
    """A table as plain JSON: per row its ours / original / paper / Δ by column."""
    rows = []
    for r in t.rows:
        row: dict[str, Any] = {"method": r.key, "label": r.label, "kind": r.kind}
        if r.kind not in ("literature", "not_run"):
            row["ours"] = {c: _plain(r.ours.get(c, NONE)) for c, _ in t.columns}
            if t.original_title:
                row["original"] = {c: _plain(r.original.get(c, NONE)) for c, _ in t.columns}
        row["paper"] = {c: {"value": p.value, "std": p.std} for c, p in r.paper.items()}
        row["delta"] = {c: None if r.delta(c) is None else round(r.delta(c), 4) for c, _ in t.columns}
        if t.original_title:
            row["delta_original"] = {c: None if r.delta(c, True) is None else round(r.delta(c, True), 4)
                                     for c, _ in t.columns}
        rows.append(row)
    return {"title": t.title, "variant": t.variant, "columns": [c for c, _ in t.columns],
            "original": t.original_title, "rows": rows}


def csv_rows(t: CariTable) -> list[dict[str, Any]]:
    """A table in long form for ``cari_tables.csv``: one row per (method, column)."""
    out = []
    for r in t.rows:
        for c, title in t.columns:
            v, o, p = r.ours.get(c, NONE), r.original.get(c, NONE), r.paper.get(c)
            out.append({"dataset": t.dataset, "table": t.key, "variant": t.variant, "method": r.key,
                        "label": r.label, "kind": r.kind, "column": c, "title": title,
                        "ours": v.mean, "ours_std": v.std, "ours_floor": v.floor, "epoch": v.epoch,
                        "original": o.mean, "original_std": o.std,
                        "paper": None if p is None else p.value, "paper_std": None if p is None else p.std,
                        "delta": r.delta(c), "delta_original": r.delta(c, original=True)})
    return out
