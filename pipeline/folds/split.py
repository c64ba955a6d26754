"""Subject-disjoint k-fold splits of a manifest (docs/method.md §5.3, §9.12) and the checks every split must pass.

Fold numbering is 0-based, like the original's ``--ifold`` (Oulu-CASIA fold 4 is the fifth chunk).

Assignment of subjects to test folds
------------------------------------
1. ``exclude`` subjects are dropped: they are in no fold, neither train nor test.
2. Folds with an explicit test-subject list (``explicit``) get exactly that list (Oulu-CASIA fold 4 =
   P018, P019, P022, P030, P043, P055, P069, P078, recovered from the original pair file).
3. The remaining subjects go to the remaining ``k'`` folds (in increasing fold order):

   - ``contiguous`` (default): contiguous chunks of the *sorted* remaining subjects, the chunk sizes of
     ``sklearn.model_selection.KFold(k')`` without shuffle (the first ``n % k'`` chunks have one subject more).
     This is the original code's intended semantics (docs/method.md §9.11) with a deterministic subject order in place
     of Python-2 ``set`` order. Adding or removing a subject shifts the chunk boundaries, so subjects after it
     move to other folds.
   - ``hash``: fold = ``k'``-th remaining fold picked by ``sha256(f"{seed}:{subject}") mod k'``. A subject's fold
     depends only on the seed, the subject and the explicit lists, so adding subjects never moves existing ones.
     The price is balance: fold sizes are multinomial (for 80 subjects in 10 folds, about 8 ± 2.7 per fold), not
     equal; an empty test fold is an error (change the seed). Balanced *and* stable is impossible in general:
     keeping sizes equal when a subject is added needs some existing subject to move.

Train subjects of a fold = every non-excluded subject not in its test list. Train and test images of a fold are all
manifest images of those subjects. :func:`check_folds` verifies, on every run, that no subject is both train and
test in a fold, that no image is both, and that every image is in exactly one test fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.errors import UserError

__all__ = ["Assignment", "Fold", "SplitError", "assign_test_subjects", "build_folds", "check_folds",
           "folds_from_subject_lists", "hash_fold"]

Assignment = Literal["contiguous", "hash"]


class SplitError(UserError):
    """A split is invalid (leakage, an image in no or several test folds, a bad explicit list)."""


@dataclass(frozen=True)
class Fold:
    """One fold: its test and train subjects and image ids (sorted tuples)."""

    index: int
    test_subjects: tuple[str, ...]
    train_subjects: tuple[str, ...]
    test_image_ids: tuple[str, ...]
    train_image_ids: tuple[str, ...]


def hash_fold(subject: str, seed: int, n: int) -> int:
    """``sha256(f"{seed}:{subject}")`` as an integer mod ``n``: stable across runs, platforms, Python versions."""
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def assign_test_subjects(
    subjects: Iterable[str],
    k: int,
    *,
    assignment: Assignment = "contiguous",
    seed: int = 0,
    explicit: Mapping[int, Sequence[str]] | None = None,
    exclude: Iterable[str] = (),
) -> list[list[str]]:
    """The sorted test subjects of each of the ``k`` folds (rules in the module docstring).

    Raises:
        SplitError: ``k < 2``; an explicit fold index outside ``0..k-1``; an explicit or excluded subject that is not
            in ``subjects``; a subject listed for two folds or both listed and excluded; a fold left without test
            subjects.
    """
    if k < 2:
        raise SplitError(f"k = {k}: need at least 2 folds")
    explicit = {int(f): list(s) for f, s in (explicit or {}).items()}
    all_subjects = sorted(set(subjects))
    known = set(all_subjects)
    excluded = set(exclude)
    unknown = sorted(excluded - known)
    if unknown:
        raise SplitError(f"exclude_subjects: unknown subject(s) {unknown} (not in the manifest)")
    owner: dict[str, int] = {}
    for fold, listed in sorted(explicit.items()):
        if not 0 <= fold < k:
            raise SplitError(f"test_subjects: fold {fold} is not in 0..{k - 1}")
        unknown = sorted(set(listed) - known)
        if unknown:
            raise SplitError(f"test_subjects.{fold}: unknown subject(s) {unknown} (not in the manifest)")
        for s in listed:
            if s in excluded:
                raise SplitError(f"test_subjects.{fold}: subject {s!r} is also in exclude_subjects")
            if s in owner and owner[s] != fold:
                raise SplitError(f"test_subjects: subject {s!r} is listed for folds {owner[s]} and {fold}")
            owner[s] = fold
    rest = [s for s in all_subjects if s not in excluded and s not in owner]
    free = [f for f in range(k) if f not in explicit]
    tests: list[list[str]] = [sorted(set(explicit.get(f, []))) for f in range(k)]
    if rest and not free:
        raise SplitError(f"every fold has an explicit test list, but {len(rest)} subjects are in none "
                         f"(first: {rest[0]}); list them or exclude them")
    if free:
        if assignment == "contiguous":
            for fold, chunk in zip(free, np.array_split(np.array(rest, dtype=object), len(free)), strict=True):
                tests[fold] = [str(s) for s in chunk]
        elif assignment == "hash":
            for s in rest:
                tests[free[hash_fold(s, seed, len(free))]].append(s)
        else:
            raise SplitError(f"unknown assignment {assignment!r}: use contiguous or hash")
    empty = [f for f in range(k) if not tests[f]]
    if empty:
        hint = "change folds.seed or use assignment: contiguous" if assignment == "hash" else "lower folds.k"
        raise SplitError(f"fold(s) {empty} would have no test subject ({len(rest) + len(owner)} subjects for "
                         f"k = {k}): {hint}")
    return [sorted(t) for t in tests]


def folds_from_subject_lists(
    manifest: pd.DataFrame, test_subjects: Sequence[Sequence[str]], *, exclude: Iterable[str] = ()
) -> list[Fold]:
    """Build :class:`Fold` objects (image ids included) from per-fold test-subject lists.

    Args:
        manifest: needs ``image_id`` and ``subject``.
        test_subjects: the test subjects of fold 0, 1, ... .
        exclude: subjects in no fold at all.
    """
    excluded = set(exclude)
    kept = manifest.loc[~manifest["subject"].isin(excluded), ["image_id", "subject"]]
    by_subject = {s: tuple(sorted(g["image_id"].astype(str))) for s, g in kept.groupby("subject", sort=True)}
    subjects = sorted(by_subject)
    folds = []
    for index, listed in enumerate(test_subjects):
        test = tuple(sorted(set(listed)))
        test_set = set(test)
        train = tuple(s for s in subjects if s not in test_set)
        folds.append(Fold(
            index=index,
            test_subjects=test,
            train_subjects=train,
            test_image_ids=tuple(sorted(i for s in test for i in by_subject.get(s, ()))),
            train_image_ids=tuple(sorted(i for s in train for i in by_subject[s])),
        ))
    return folds


def build_folds(
    manifest: pd.DataFrame,
    k: int,
    *,
    assignment: Assignment = "contiguous",
    seed: int = 0,
    explicit: Mapping[int, Sequence[str]] | None = None,
    exclude: Iterable[str] = (),
) -> list[Fold]:
    """Assign the manifest's subjects to ``k`` folds, build them and :func:`check_folds` them.

    Raises:
        SplitError: see :func:`assign_test_subjects` and :func:`check_folds`.
    """
    exclude = list(exclude)
    tests = assign_test_subjects(manifest["subject"].astype(str), k, assignment=assignment, seed=seed,
                                 explicit=explicit, exclude=exclude)
    folds = folds_from_subject_lists(manifest, tests, exclude=exclude)
    check_folds(folds, manifest, exclude=exclude)
    return folds


def check_folds(folds: Sequence[Fold], manifest: pd.DataFrame, *, exclude: Iterable[str] = (),
                require_cover: bool = True) -> None:
    """Fail loudly on leakage or a bad cover.

    Checks, for every fold: no subject is both a train and a test subject; no image id is both a train and a test
    image; no train image belongs to a test subject (and no test image to a train subject). Over all folds: every
    image of a non-excluded subject is in exactly one test fold (``require_cover``; with ``require_cover=False``,
    at most one, as for LFW where some people are in no pair).

    Raises:
        SplitError: naming the fold, the count and the first offending subject or image.
    """
    subject_of = dict(zip(manifest["image_id"].astype(str), manifest["subject"].astype(str), strict=True))
    for fold in folds:
        both = sorted(set(fold.test_subjects) & set(fold.train_subjects))
        if both:
            raise SplitError(f"fold {fold.index}: {len(both)} subject(s) in both train and test (first: {both[0]})")
        shared = sorted(set(fold.test_image_ids) & set(fold.train_image_ids))
        if shared:
            raise SplitError(f"fold {fold.index}: {len(shared)} image(s) in both train and test "
                             f"(first: {shared[0]})")
        test_set = set(fold.test_subjects)
        leaked = [i for i in fold.train_image_ids if subject_of.get(i) in test_set]
        if leaked:
            raise SplitError(f"fold {fold.index}: {len(leaked)} train image(s) of test subjects "
                             f"(first: {leaked[0]}, subject {subject_of[leaked[0]]})")
        stray = [i for i in fold.test_image_ids if subject_of.get(i) not in test_set]
        if stray:
            raise SplitError(f"fold {fold.index}: {len(stray)} test image(s) of subjects that are not test subjects "
                             f"(first: {stray[0]})")
    counts = pd.Series(0, index=pd.Index(sorted(subject_of), dtype=object), dtype=np.int64)
    for fold in folds:
        counts.loc[list(fold.test_image_ids)] += 1
    excluded = set(exclude)
    counts = counts[[subject_of[i] not in excluded for i in counts.index]]
    several = counts[counts > 1]
    if len(several):
        raise SplitError(f"{len(several)} image(s) in more than one test fold (first: {several.index[0]}, "
                         f"in {int(several.iloc[0])} folds)")
    none = counts[counts == 0]
    if require_cover and len(none):
        raise SplitError(f"{len(none)} image(s) in no test fold (first: {none.index[0]})")
