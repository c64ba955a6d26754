"""The caricature demo's targets, checked at the end of ``make demo`` (``reports/cari_demo_check.txt``): PASS or
FAIL per target, with the measured numbers (the structure of :mod:`pipeline.report.demo_check`).

Evaluated only on the embedded demo data (``source.kind: demo_caricature``), at the last epoch of every run (no
selection on the test split):

CaVI-protocol demo (``demo_cavi``):

- the caricature task is the hard one: ``single_cari``'s cari-id ≤ ``single_visual``'s visual-id − 10 points;
- the identities are not given away by pixels: the pixel baseline's caricature–photo verification ≤ 0.65, and
  ``dynamic``'s ≥ the pixel baseline's + 15 points;
- the network learns both identification tasks: under ``dynamic`` visual-id and cari-id ≥ 10 × chance
  (chance = 1 / the split's classes, ``data.classes`` of the metrics);
- the modalities differ: ``single_visual``'s visual head on caricatures (c2v) ≤ its visual-id − 10 points.

WebCaricature-protocol demo (``demo_webcari``):

- VAL at FAR 1 % is measurable (enough different-identity pairs: ``far_floor`` ≤ 0.01);
- under ``dynamic``, C2P and P2C Rank-1 ≥ 5 × chance (chance = the mean over the direction's splits of 1 / the
  gallery's identities, from the split's ``identification.parquet``) and Rank-10 ≥ Rank-1.

Fig. 3's behaviour, on every demo dataset (:func:`curve_checks`; from ``steps.csv``: each task's mean weight over
all steps and mean loss over the steps where it had a labelled sample): under ``dynamic`` the task with the largest
mean loss has the largest mean weight; under ``naive_dynamic`` it has the smallest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.cari_tables import Roles, accuracy, identification, val_entry
from pipeline.report.demo_check import Check
from pipeline.report.figures import step_tasks

__all__ = ["CHANCE_FACTOR_CLASSES", "CHANCE_FACTOR_RANK1", "GAP", "MEASURABLE_FAR", "PIXEL_GAP", "PIXEL_MAX",
           "cavi_checks", "curve_checks", "gallery_chance", "task_means", "webcari_checks"]

#: points by which the caricature task trails the visual one (single-task runs), and c2v trails visual-id
GAP = 10.0
#: the pixel baseline's verification accuracy at most, and dynamic's lead over it (points)
PIXEL_MAX = 0.65
PIXEL_GAP = 15.0
#: identification accuracy factors over chance (CaVI heads; WebCaricature Rank-1)
CHANCE_FACTOR_CLASSES = 10.0
CHANCE_FACTOR_RANK1 = 5.0
#: VAL at this FAR must be measurable on the WebCaricature demo
MEASURABLE_FAR = 0.01
VARIANT = "last"


def _fraction(record: Mapping[str, Any] | None, criterion: str | None, key: str | None) -> float | None:
    if record is None:
        return None
    v = accuracy(record, criterion, key, VARIANT).mean
    return None if v is None else v / 100.0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _missing(records: Mapping[str, Any], methods: Sequence[str]) -> str:
    absent = [m for m in methods if m not in records]
    return f" ({', '.join(absent)} not run)" if absent else ""


def cavi_checks(dataset: str, records: Mapping[str, Mapping[str, Any]], roles: Roles) -> list[Check]:
    """The CaVI-protocol demo's targets (module docstring) on ``records`` (method → metrics record; ``pixel_pca``
    the baseline)."""
    g = records.get
    visual = (roles.visual, roles.visual and f"{roles.visual}_accuracy")
    cari = (roles.cari, roles.cari and f"{roles.cari}_accuracy")
    checks = []

    sc = _fraction(g("single_cari"), *cari)
    sv = _fraction(g("single_visual"), *visual)
    bound = None if sv is None else sv - GAP / 100
    checks.append(Check(f"{dataset} single_cari cari-id vs single_visual visual-id", sc,
                        f"<= single_visual visual-id {_fmt(sv)} - {GAP:g} points = {_fmt(bound)}"
                        + _missing(records, ["single_cari", "single_visual"]),
                        sc is not None and bound is not None and sc <= bound))

    pix = _fraction(g("pixel_pca"), "verification", "verification_accuracy")
    checks.append(Check(f"{dataset} pixel_pca caricature-photo verification", pix, f"<= {PIXEL_MAX:.2f}"
                        + _missing(records, ["pixel_pca"]), pix is not None and pix <= PIXEL_MAX))
    dyn = _fraction(g("dynamic"), "verification", "verification_accuracy")
    bound = None if pix is None else pix + PIXEL_GAP / 100
    checks.append(Check(f"{dataset} dynamic caricature-photo verification", dyn,
                        f">= pixel_pca {_fmt(pix)} + {PIXEL_GAP:g} points = {_fmt(bound)}"
                        + _missing(records, ["dynamic", "pixel_pca"]),
                        dyn is not None and bound is not None and dyn >= bound))

    classes = ((g("dynamic") or {}).get("data") or {}).get("classes")
    chance = 1.0 / classes if classes else None
    for name, (crit, key) in (("visual-id", visual), ("cari-id", cari)):
        acc = _fraction(g("dynamic"), crit, key)
        target = None if chance is None else CHANCE_FACTOR_CLASSES * chance
        checks.append(Check(f"{dataset} dynamic {name}", acc,
                            f">= {CHANCE_FACTOR_CLASSES:g} x chance (1/{classes or '?'}) = {_fmt(target)}"
                            + _missing(records, ["dynamic"]),
                            acc is not None and target is not None and acc >= target))

    c2v = _fraction(g("single_visual"), roles.visual, roles.visual and f"{roles.visual}_cross_accuracy")
    bound = None if sv is None else sv - GAP / 100
    checks.append(Check(f"{dataset} single_visual c2v (visual head on caricatures)", c2v,
                        f"<= its visual-id {_fmt(sv)} - {GAP:g} points = {_fmt(bound)}"
                        + _missing(records, ["single_visual"]),
                        c2v is not None and bound is not None and c2v <= bound))
    return checks


def gallery_chance(identification_file: Path) -> dict[str, float]:
    """Per direction, the chance Rank-1: the mean over its splits of 1 / the gallery's identities (the split's
    ``identification.parquet``: ``group``, ``direction``, ``role``, ``label``)."""
    ident = pd.read_parquet(identification_file, columns=["group", "direction", "role", "label"])
    gallery = ident[ident["role"] == "gallery"]
    out = {}
    for direction, rows in gallery.groupby("direction", sort=True):
        per_split = rows.groupby("group")["label"].nunique()
        out[str(direction)] = float(np.mean(1.0 / per_split.to_numpy(dtype=np.float64)))
    return out


def webcari_checks(dataset: str, records: Mapping[str, Mapping[str, Any]], chance: Mapping[str, float]
                   ) -> list[Check]:
    """The WebCaricature-protocol demo's targets (module docstring); ``chance``: :func:`gallery_chance`."""
    dynamic = records.get("dynamic")
    checks = []
    entry = val_entry((dynamic or {}).get(VARIANT), MEASURABLE_FAR)
    floor = None if not entry or entry.get("far_floor") is None else float(entry["far_floor"])
    measurable = bool(entry and entry.get("measurable")) and floor is not None and floor <= MEASURABLE_FAR
    checks.append(Check(f"{dataset} VAL@FAR={MEASURABLE_FAR:g} measurable (its far floor)", floor,
                        f"<= {MEASURABLE_FAR:g}" + ("" if entry else " (no VAL at that FAR in dynamic's metrics)")
                        + _missing(records, ["dynamic"]), measurable))
    for direction in ("C2P", "P2C"):
        r1, _, _ = identification(dynamic, direction, 1, VARIANT) if dynamic else (None, None, None)
        r10, _, _ = identification(dynamic, direction, 10, VARIANT) if dynamic else (None, None, None)
        rank1 = None if r1 is None or r1.mean is None else r1.mean / 100
        rank10 = None if r10 is None or r10.mean is None else r10.mean / 100
        c = chance.get(direction)
        target = None if c is None else CHANCE_FACTOR_RANK1 * c
        checks.append(Check(f"{dataset} dynamic {direction} Rank-1", rank1,
                            f">= {CHANCE_FACTOR_RANK1:g} x chance ({_fmt(c)}: 1 / gallery identities) = "
                            f"{_fmt(target)}" + _missing(records, ["dynamic"]),
                            rank1 is not None and target is not None and rank1 >= target))
        checks.append(Check(f"{dataset} dynamic {direction} Rank-10", rank10, f">= its Rank-1 {_fmt(rank1)}",
                            rank10 is not None and rank1 is not None and rank10 >= rank1))
    return checks


def task_means(steps: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Each task's mean weight over all steps and mean loss over the steps where it was present (``present_<task>``;
    every step when the column is absent)."""
    weights, losses = {}, {}
    for t in step_tasks(steps):
        weights[t] = float(steps[f"weight_{t}"].mean())
        present = steps[f"present_{t}"].astype(bool) if f"present_{t}" in steps else pd.Series(True, steps.index)
        losses[t] = float(steps.loc[present, f"loss_{t}"].mean()) if present.any() else float("nan")
    return weights, losses


def curve_checks(dataset: str, curves: Mapping[str, pd.DataFrame]) -> list[Check]:
    """Fig. 3's behaviour: under ``dynamic`` the task with the largest mean loss has the largest mean weight, under
    ``naive_dynamic`` the smallest (module docstring). ``curves``: method → its ``steps.csv``."""
    checks = []
    for method, want in (("dynamic", "largest"), ("naive_dynamic", "smallest")):
        name = f"{dataset} {method}: the largest-loss task has the {want} weight"
        steps = curves.get(method)
        if steps is None:
            checks.append(Check(name, None, f"({method} not run)", False))
            continue
        weights, losses = task_means(steps)
        known = {t: v for t, v in losses.items() if not np.isnan(v)}
        if not known:
            checks.append(Check(name, None, "(no task loss logged)", False))
            continue
        hardest = max(known, key=known.__getitem__)
        pick = max if want == "largest" else min
        chosen = pick(weights, key=weights.__getitem__)
        means = ", ".join(f"{t} loss {losses[t]:.3f} weight {weights[t]:.3f}" for t in weights)
        checks.append(Check(name, weights[hardest],
                            f"weight of {hardest} (largest mean loss) is the {want}; {want} weight: {chosen}; "
                            f"means over the run: {means}", chosen == hardest))
    return checks
