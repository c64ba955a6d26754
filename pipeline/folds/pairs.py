"""Verification pairs with expression per fold: the original 4-type recipe, seeded (docs/method.md §5.4, §9.13).

The original (``utils/get_oulucasia_FaceVeriExprValidPairs.py``) made one pair file for fold 4 with unseeded
``random.sample``; we make one per fold with a numpy ``Generator``:

- **references**: the neutral first frames (``frame == 0``, the first file of the sequence) of the fold's test
  subjects, one per labelled sequence (a sequence whose expression is a class of the label set: 6 per Oulu-CASIA
  subject; CK+'s labelled sequences only). The manifest must keep first frames (reader option ``keep_first >= 1``).
- **candidates**: the test subjects' labelled non-neutral frames (the label set's peak frames,
  :func:`pipeline.data.label_sets.apply_label_set`).
- for each type 1..4 (appended type by type, so rows of type 1 come first), each reference (sorted by subject, then
  sequence) and each required expression ``r`` (in the params order), one input image drawn uniformly from:

  ====  ===========================================================  =======  ===========
  type  candidates                                                   is_same  is_required
  ====  ===========================================================  =======  ===========
  1     same subject, expression ``r``                               True     True
  2     same subject, a non-neutral expression other than ``r``      True     False
  3     another test subject, expression ``r``                       False    True
  4     another test subject, a non-neutral expression other than r  False    False
  ====  ===========================================================  =======  ===========

  "Other than ``r``" is relative to the current required expression, as in the original file (row 96 pairs a
  Surprise input with required Happiness). Types 3 and 4 draw uniformly over the pooled images of all other test
  subjects. A combination without any candidate (a CK+ subject without a happy sequence, a fold with one test
  subject) is skipped and counted under ``type<t>:<r>``.

With Oulu-CASIA fold 4 (8 subjects × 6 references × 2 required) this gives 96 pairs per type, 384 in all, as the
original file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.config import LabelSetConfig
from pipeline.data.label_sets import apply_label_set

__all__ = ["PAIR_COLUMNS", "PairSet", "drop_unaligned", "empty_pairs", "expression_pairs", "pairs_frame",
           "pair_type"]

#: the columns of a ``fold<k>-pairs.parquet`` file (expression columns are null for LFW; type 0 = no expression type)
PAIR_COLUMNS: tuple[str, ...] = ("input_id", "reference_id", "is_same", "expression_actual", "expression_required",
                                 "is_required", "type", "row")


@dataclass
class PairSet:
    """The pairs of one fold and what could not be made.

    ``skipped`` counts skipped combinations by reason (``type3:Happiness``: no candidate); ``unmatched`` lists
    pair-file lines whose images are not in the manifest (original files and LFW), as ``(row, reason)``.
    """

    pairs: pd.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)
    unmatched: list[tuple[int, str]] = field(default_factory=list)

    def counts_by_type(self) -> dict[str, int]:
        """Pairs per type, as ``{"1": n, ...}`` (types present only)."""
        return {str(int(t)): int(n) for t, n in self.pairs["type"].value_counts().sort_index().items()}


def pair_type(is_same: bool, is_required: bool) -> int:
    """The recipe type (1–4) of a pair with these flags."""
    return (1 if is_required else 2) if is_same else (3 if is_required else 4)


def pairs_frame(rows: Sequence[dict] | None = None) -> pd.DataFrame:
    """A pairs DataFrame with the :data:`PAIR_COLUMNS` dtypes (nullable expression columns)."""
    df = pd.DataFrame(list(rows or []), columns=list(PAIR_COLUMNS))
    return df.astype({
        "input_id": "string", "reference_id": "string", "is_same": "bool",
        "expression_actual": "string", "expression_required": "string", "is_required": "boolean",
        "type": "int8", "row": "int64",
    })


def empty_pairs() -> pd.DataFrame:
    """A pairs DataFrame without rows."""
    return pairs_frame()


def expression_pairs(
    manifest: pd.DataFrame,
    label_set: LabelSetConfig,
    test_subjects: Sequence[str],
    required: Sequence[str],
    seed: int | Sequence[int],
) -> PairSet:
    """The 4-type expression verification pairs of one fold (recipe in the module docstring).

    Args:
        manifest: the dataset's manifest (``image_id``, ``subject``, ``sequence``, ``expression``, ``frame``,
            ``n_frames``).
        label_set: gives the candidate (peak) frames and their expression names.
        test_subjects: the fold's test subjects.
        required: the required expressions, class names of ``label_set`` (not its neutral class).
        seed: seed of ``numpy.random.default_rng`` (an int, or e.g. ``[seed, fold]``).

    Raises:
        ValueError: a required expression is not a non-neutral class of the label set; the test subjects have no
            reference frame.
    """
    bad = [r for r in required if r not in label_set.classes or r == label_set.neutral]
    if bad:
        classes = [c for c in label_set.classes if c != label_set.neutral]
        raise ValueError(f"required expression(s) {bad} are not expressions of the label set {classes}")
    test = manifest.loc[manifest["subject"].isin(set(test_subjects))]
    labelled = apply_label_set(test, label_set)
    cand = labelled.loc[labelled["label_name"] != (label_set.neutral or "\0")].sort_values("image_id")
    expr = test["expression"].astype("object")
    is_ref = (test["frame"].to_numpy() == 0) & expr.isin(label_set.classes).to_numpy(dtype=bool)
    refs = test.loc[is_ref].sort_values(["subject", "sequence", "image_id"])
    if refs.empty and len(test):
        raise ValueError("no neutral first frame (frame 0) of a labelled sequence among the test subjects: the "
                         "recipe needs them as references (manifest reader option keep_first >= 1)")

    ids = cand["image_id"].astype(str).to_numpy()
    subj = cand["subject"].astype(str).to_numpy()
    lab = cand["label_name"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    skipped: Counter[str] = Counter()
    ref_list = list(zip(refs["image_id"].astype(str), refs["subject"].astype(str), strict=True))
    for t in (1, 2, 3, 4):
        for ref_id, ref_subject in ref_list:
            same_subject = subj == ref_subject
            for r in required:
                mask = (same_subject if t <= 2 else ~same_subject) & ((lab == r) if t in (1, 3) else (lab != r))
                choices = np.flatnonzero(mask)
                if not len(choices):
                    skipped[f"type{t}:{r}"] += 1
                    continue
                pick = int(choices[rng.integers(len(choices))])
                rows.append({"input_id": ids[pick], "reference_id": ref_id, "is_same": t <= 2,
                             "expression_actual": lab[pick], "expression_required": r,
                             "is_required": lab[pick] == r, "type": t, "row": len(rows)})
    return PairSet(pairs_frame(rows), skipped)


def drop_unaligned(pairs: pd.DataFrame, aligned_ids: Iterable[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pairs whose two images were both aligned, and how many were dropped and why.

    Downstream stages evaluate only faces that alignment found (:class:`pipeline.faces.source.FaceSource` ids); a
    pair touching an image that failed alignment is skipped and counted, never scored as a miss.

    Returns:
        ``(kept pairs in their original order, {"input_not_aligned": n, "reference_not_aligned": m,
        "dropped": pairs removed})`` — a pair with both images missing counts under both reasons, once in
        ``dropped``.
    """
    ids = set(aligned_ids)
    bad_input = ~pairs["input_id"].isin(ids)
    bad_ref = ~pairs["reference_id"].isin(ids)
    dropped = bad_input | bad_ref
    counts = {"input_not_aligned": int(bad_input.sum()), "reference_not_aligned": int(bad_ref.sum()),
              "dropped": int(dropped.sum())}
    return pairs[~dropped].reset_index(drop=True), counts
