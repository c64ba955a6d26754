"""LFW ``pairs.txt`` folds mapped to manifest image ids (docs/method.md §5.5).

The official 10 folds are the file's blocks, unshuffled: fold ``k`` is pairs ``k*2n .. (k+1)*2n - 1`` (``n`` = 300
pairs per class, so ``fold = row // 600`` for the standard file), each block its same pairs then its different
pairs. An image is the manifest row with ``subject == name`` and ``frame == number`` (the LFW reader keeps the
1-based number of ``<name>_<dddd>.jpg`` as ``frame``). A pair with an image missing from the manifest (not on disk,
or skipped by the manifest) is skipped and counted, as the original does for files that failed alignment.

The people of the 10 folds are disjoint in View 2, so the folds are also a subject split: the test subjects of fold
``k`` are the people of its pairs (see :func:`lfw_test_subjects`).
"""

from __future__ import annotations

import pandas as pd

from pipeline.data.readers.lfw import LfwPairs
from pipeline.folds.pairs import PairSet, pairs_frame

__all__ = ["lfw_fold_pairs", "lfw_test_subjects"]


def lfw_fold_pairs(pairs: LfwPairs, manifest: pd.DataFrame, fold: int) -> PairSet:
    """The pairs of ``fold`` with manifest ids; ``row`` = 0-based pair index in the file, ``type`` 0.

    ``unmatched`` lists the skipped pairs as ``(row, reason)``.
    """
    key = {(str(s), int(f)): str(i) for i, s, f in
           zip(manifest["image_id"], manifest["subject"], manifest["frame"], strict=True)}
    size = 2 * pairs.n_per_class
    rows: list[dict] = []
    unmatched: list[tuple[int, str]] = []
    for offset, p in enumerate(pairs.fold(fold)):
        row = fold * size + offset
        a, b = key.get((p.name1, p.i1)), key.get((p.name2, p.i2))
        if a is None or b is None:
            name, number = (p.name1, p.i1) if a is None else (p.name2, p.i2)
            unmatched.append((row, f"image not in the manifest: {name} {number}"))
            continue
        rows.append({"input_id": a, "reference_id": b, "is_same": p.is_same, "expression_actual": None,
                     "expression_required": None, "is_required": None, "type": 0, "row": row})
    return PairSet(pairs_frame(rows), unmatched=unmatched)


def lfw_test_subjects(pairs: LfwPairs, subjects: set[str]) -> list[list[str]]:
    """The sorted people of each fold's pairs that are in ``subjects`` (the manifest's)."""
    out: list[set[str]] = [set() for _ in range(pairs.n_folds)]
    for p in pairs:
        out[p.fold] |= {n for n in (p.name1, p.name2) if n in subjects}
    return [sorted(s) for s in out]
