"""The numbers the caricature paper reports, in percent: Tables I–IV and the README's cross-modal checks.

Source: Ming et al., "Dynamic Deep Multi-task Learning for Caricature-Visual Face Recognition" (docs/method.md §8,
the paper's text in the project's seed material): Table I (CaVI accuracy), Table II (WebCaricature verification,
VAL ± std), Tables III and IV (WebCaricature C2P and P2C identification, Rank-1 / Rank-10 ± std over the 10
splits); the cross-modal numbers come from the caricature repository's README. The paper's text fused "x ± y" into
"xy" in Table II; the split below is the natural one (docs/method.md §8).

Two kinds of rows:

- the paper's own runs, keyed by the method names of ``cari.methods`` (``naive_dynamic``, ``single_verif``,
  ``single_visual``, ``single_cari``, ``dynamic``), printed with the paper's labels: our runs stand beside them;
- the literature rows the paper quotes (CaVINet and its variants from Garg et al.; the WebCaricature baselines from
  Huo et al.), which this project does not reproduce: the tables quote them as such.

Column keys: Table I ``cari_visual`` (caricature–photo verification accuracy), ``visual_id``, ``cari_id``;
cross-modal ``c2v`` (the visual model on caricatures), ``v2c`` (the caricature model on photos); Table II
``val@<far>`` (:func:`val_column`); Tables III–IV ``rank1``, ``rank10``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CARI_SOURCE", "CROSS_MODAL", "IDENTIFICATION", "LITERATURE_SOURCES", "PaperNumber", "PaperRow",
           "PaperTable", "TABLE_I", "TABLE_II", "TABLE_II_FARS", "val_column"]

CARI_SOURCE = ("Ming et al., \"Dynamic Deep Multi-task Learning for Caricature-Visual Face Recognition\", "
               "Tables I-IV; cross-modal numbers: the caricature repository's README (docs/method.md §8)")
#: where the quoted literature rows come from
LITERATURE_SOURCES = {
    "cavi": "Garg et al., \"Deep cross modal learning for caricature verification and identification (CaVINet)\", "
            "2018, as quoted in the paper's Table I",
    "webcaricature": "Huo et al., WebCaricature's baselines, as quoted in the paper's Tables II-IV",
}


@dataclass(frozen=True)
class PaperNumber:
    """One reported number (percent) and its ± when the paper gives one."""

    value: float
    std: float | None = None


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: ``key`` (a ``cari.methods`` name for the paper's runs, the label for a literature
    row), the label the paper prints and its numbers by column key (a missing column: the paper prints "–")."""

    key: str
    label: str
    values: dict[str, PaperNumber] = field(default_factory=dict)


def _row(key: str, label: str, **values: float | tuple[float, float]) -> PaperRow:
    return PaperRow(key, label, {k: PaperNumber(*v) if isinstance(v, tuple) else PaperNumber(v)
                                 for k, v in values.items()})


@dataclass(frozen=True)
class PaperTable:
    """A paper table: its literature rows (quoted, not reproduced) and its own runs by method name."""

    literature: tuple[PaperRow, ...]
    runs: dict[str, PaperRow]


#: Table I, CaVI, accuracy % (one split: no ±)
TABLE_I = PaperTable(
    literature=(
        _row("CaVINet", "CaVINet", cari_visual=91.06, visual_id=94.50, cari_id=85.09),
        _row("CaVINet(TW)", "CaVINet(TW)", cari_visual=84.32, visual_id=85.16, cari_id=86.02),
        _row("CaVINet(w/o)", "CaVINet(w/o)", cari_visual=86.01, visual_id=93.46, cari_id=80.43),
        _row("CaVINet(shared)", "CaVINet(shared)", cari_visual=88.59, visual_id=90.56, cari_id=81.23),
        _row("CaVINet(visual)", "CaVINet(visual)", cari_visual=88.58, visual_id=92.16, cari_id=83.36),
    ),
    runs={r.key: r for r in (
        _row("naive_dynamic", "Naive Dynamic", cari_visual=93.80, visual_id=97.60, cari_id=75.80),
        _row("single_verif", "Ours (verif)", cari_visual=92.46),
        _row("single_visual", "Ours (visual)", visual_id=98.10),
        _row("single_cari", "Ours (cari)", cari_id=78.20),
        _row("dynamic", "Ours (Multi-task)", cari_visual=94.92, visual_id=98.35, cari_id=85.61),
    )},
)

#: the README's cross-modal checks on CaVI: the visual model on caricatures (c2v), the caricature model on photos
#: (v2c)
CROSS_MODAL = PaperTable(
    literature=(),
    runs={r.key: r for r in (_row("single_visual", "the visual model on caricatures", c2v=53.60),
                             _row("single_cari", "the caricature model on photos", v2c=41.80))},
)

#: Table II's FAR targets (0.1 % and 1 %)
TABLE_II_FARS: tuple[float, ...] = (0.001, 0.01)


def val_column(far: float) -> str:
    """Table II's column key of a FAR target: ``val@0.001``."""
    return f"val@{far:g}"


#: Table II, WebCaricature verification, VAL % ± std (over the 10 internal folds)
TABLE_II = PaperTable(
    literature=tuple(_row(name, name, **{val_column(0.001): a, val_column(0.01): b}) for name, a, b in (
        ("SIFT-Land-ITML", (5.08, 1.82), (18.07, 4.72)),
        ("VGG-Eye-PCA", (21.42, 2.02), (40.28, 2.91)),
        ("VGG-Eye-ITML", (18.97, 3.90), (41.72, 5.83)),
        ("VGG-Box-PCA", (28.42, 2.04), (55.53, 2.76)),
        ("VGG-Box", (34.94, 5.06), (57.22, 6.50)),
    )),
    runs={key: _row(key, label, **{val_column(0.001): a, val_column(0.01): b}) for key, label, a, b in (
        ("naive_dynamic", "naive Dynamic", (38.39, 4.58), (79.69, 1.3)),
        ("single_verif", "Ours (Single-verif)", (42.10, 3.05), (84.52, 0.80)),
        ("dynamic", "Ours (Multi-task)", (45.82, 1.65), (83.20, 2.00)),
    )},
)


def _identification(literature: tuple, runs: tuple) -> PaperTable:
    return PaperTable(
        literature=tuple(_row(name, name, rank1=r1, rank10=r10) for name, r1, r10 in literature),
        runs={key: _row(key, label, rank1=r1, rank10=r10) for key, label, r1, r10 in runs})


#: Tables III (caricature → photo) and IV (photo → caricature), WebCaricature identification, Rank-1 / Rank-10 %
#: ± std over the 10 splits (the paper's Rank-10 came from the original code's strided Rank-n, docs/method.md §6.6)
IDENTIFICATION: dict[str, PaperTable] = {
    "C2P": _identification(
        (("SIFT-Land-KCSR", (24.87, 1.50), (61.57, 1.37)),
         ("VGG-Eye-PCA", (35.07, 1.84), (71.64, 1.32)),
         ("VGG-Eye-KCSR", (39.76, 1.60), (75.38, 1.34)),
         ("VGG-Box-PCA", (49.89, 1.97), (84.21, 1.08)),
         ("VGG-Box-KCSR", (55.41, 1.41), (87.00, 0.92))),
        (("naive_dynamic", "naive Dynamic", (86.00, 1.70), (98.21, 1.08)),
         ("single_verif", "Ours (Single-verif)", (85.55, 1.30), (96.31, 0.08)),
         ("dynamic", "Ours (Multi-task)", (87.30, 1.20), (99.21, 1.07)))),
    "P2C": _identification(
        (("SIFT-Land-KCSR", (23.42, 1.57), (69.95, 2.34)),
         ("VGG-Eye-PCA", (36.18, 3.24), (68.95, 3.25)),
         ("VGG-Eye-KCSR", (40.67, 3.61), (75.77, 2.63)),
         ("VGG-Box-PCA", (50.59, 2.37), (82.15, 1.31)),
         ("VGG-Box-KCSR", (55.53, 2.17), (86.86, 1.42))),
        (("naive_dynamic", "naive Dynamic", (82.80, 1.60), (97.81, 0.88)),
         ("single_verif", "Ours (Single-verif)", (81.70, 2.60), (95.25, 1.08)),
         ("dynamic", "Ours (Multi-task)", (84.00, 1.60), (99.01, 1.2)))),
}
