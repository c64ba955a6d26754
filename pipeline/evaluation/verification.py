"""k-fold face verification on pairs (the facenet / LFW protocol): accuracy, VAL@FAR, AUC and EER.

The protocol (docs/method.md §6):

- **Distance**: squared Euclidean distance between L2-normalised embeddings, ``d`` in [0, 4]. A pair is predicted
  "same identity" when ``d < t`` (strictly).
- **Folds**: scikit-learn ``KFold(k)`` over the pairs (``k = 10``); each fold is once the test fold, the other
  ``k - 1`` are its training folds.
- **Accuracy**: per fold, the threshold is the *first* grid value of ``np.arange(0, 4, 0.01)`` that maximises the
  accuracy on the training folds; the accuracy at that threshold on the test fold is the fold's accuracy. Reported:
  mean and (population) standard deviation over folds, and the mean chosen threshold.
- **VAL@FAR**: per fold, the training-fold false-accept rate ``FAR(t) = FA / N_diff`` is computed on the grid
  ``np.arange(0, 4, 0.001)``; the threshold where it reaches the target is found by interpolation (see the modes);
  ``VAL = TA / N_same`` and ``FAR`` are then measured on the test fold. Reported: mean VAL, its standard deviation,
  mean FAR, mean threshold.
- **Measurability**: a training set with ``n`` different-identity pairs cannot resolve a FAR below ``1 / n``. The
  ``far_floor`` is ``1 / min(n)`` over folds; a target below it is reported as *not measurable* (``val = None``,
  ``measurable = False``) instead of a meaningless number, while the per-fold values stay available.
- **AUC, EER**: from the ROC of all pairs together (:mod:`pipeline.evaluation.roc`). ``auc_fold_mean`` is the
  original evaluation scripts' number: the mean of the test folds' AUCs. A fold holding a single class has no ROC;
  its AUC is NaN and is left out of that mean (``auc_folds`` counts the folds that entered it).

Two modes (``mode=``):

``clean`` (default)
    Every pair is used. Pairs are shuffled with ``seed`` before folding (``KFold(shuffle=True, random_state=seed)``),
    so a pair file sorted by class still gives mixed folds. VAL threshold = the largest grid threshold whose
    training FAR is <= the target, linearly interpolated towards the next grid point (the recommendation of
    docs/method.md §6.2, well defined when FAR values repeat).
``faithful``
    The original code's behaviour (docs/method.md §6.1–§6.2, §9.14). Only the first ``floor(2N / b) * b / 2`` pairs are
    used (the original embedded ``floor(N_images / 100) * 100`` images in batches of ``b = 100`` and dropped the
    trailing pairs: 350 of Oulu-CASIA fold 4's 384). Folds are contiguous (``KFold`` without shuffle), so a sorted
    pair file gives single-class folds. VAL threshold as facenet's ``calculate_val``: if the largest training FAR
    reaches the target, ``interp1d(far_train, thresholds, kind='slinear')(target)``, else 0. That call is
    reproduced here with the semantics of scipy 1.8.1 (stable sort of the FARs; the value at the *last* of tied
    FARs; 0 when the target equals a duplicated maximum); scipy >= 1.9 refuses the duplicated FAR values every
    such curve has, and scipy 1.1 sorted them unstably (ties then resolved by NumPy's sort, not reproducible).
    Both rules give the same threshold (up to rounding) except when the largest training FAR does not reach the
    target (faithful: 0, clean: the largest grid threshold) or equals it on a plateau (faithful: 0). facenet
    divides by zero on a test fold without same (different) pairs; here that fold's VAL (FAR) is NaN and left out
    of the means. Checked against facenet 1.0.5 itself by ``tests/fixtures/evaluation/facenet_reference.json``.

**VAL on the training folds** (``train_fold_val=True``, either mode): the caricature code's ``calculate_val``
(``src/facenet_ext.py`` of the caricature repository, docs/method.md §6.2 "CARI bug", §9.19) chooses the threshold
on the training folds as above and then measures VAL on those same training folds instead of the test fold
(facenet's test-fold line is commented out; it returns that VAL's mean and std and no FAR, which the scripts print
as the target). Each :class:`ValAtFar` then also holds ``fold_val_train`` (per fold: ``TA / N_same`` over the fold's
training folds at the fold's threshold) and its mean and std over the folds where it is defined, ``val_train_folds``
and ``val_train_folds_std`` (None when the target is not measurable, like ``val``). The original returns 0 where the
training folds hold no same-identity pair; here that fold is NaN and left out. Off by default, and then
:meth:`ValAtFar.to_dict` has exactly the keys it had before. Checked against the caricature code's own
``calculate_val`` (with genuine scipy 1.8.1) by ``tests/fixtures/evaluation/cari_val_train_folds_reference.json``.

Everything is vectorised over thresholds and folds: each pair's distance is binned once against the threshold grid
(``searchsorted``); cumulative per-fold, per-class histograms give every count the protocol needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import KFold

from pipeline.evaluation.checks import EvaluationInputError, as_embeddings, as_same, l2_normalize
from pipeline.evaluation.roc import auc_eer

__all__ = [
    "ACCURACY_THRESHOLDS",
    "MODES",
    "VAL_THRESHOLDS",
    "ValAtFar",
    "VerificationResult",
    "evaluate_distances",
    "evaluate_verification",
    "fold_ids",
    "squared_distances",
    "used_pairs",
]

Mode = Literal["clean", "faithful"]
MODES: tuple[str, ...] = ("clean", "faithful")
#: the accuracy threshold grid, exactly as facenet's ``lfw.evaluate`` builds it (400 values)
ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
#: the VAL@FAR threshold grid (4000 values)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
DEFAULT_FAR_TARGETS = (1e-3, 1e-2)


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN and inf become None."""
    x = float(x)
    return x if np.isfinite(x) else None


def _nums(xs: np.ndarray) -> list[float | None]:
    return [_num(x) for x in xs]


def far_key(target: float) -> str:
    """The dictionary key of a FAR target: the shortest decimal that round-trips, without exponent (``"0.001"``,
    ``"0.00001"``)."""
    return np.format_float_positional(float(target), trim="0")


@dataclass(frozen=True)
class ValAtFar:
    """VAL at one FAR target. Per-fold arrays are ``Array[k]``; NaN where a fold's value is undefined."""

    target: float
    measurable: bool  #: ``target >= far_floor``
    far_floor: float  #: 1 / (fewest different-identity pairs in any fold's training folds)
    val: float | None  #: mean test-fold VAL (None if not measurable or undefined in every fold)
    val_std: float | None
    far: float | None  #: mean test-fold FAR
    threshold: float | None  #: mean threshold over folds
    fold_val: np.ndarray = field(repr=False)
    fold_far: np.ndarray = field(repr=False)
    fold_threshold: np.ndarray = field(repr=False)
    #: mean VAL on the training folds at each fold's threshold (the caricature code's number; ``train_fold_val``)
    val_train_folds: float | None = None
    val_train_folds_std: float | None = None
    #: Array[k], VAL on each fold's training folds; None unless computed (``train_fold_val=True``)
    fold_val_train: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; the training-fold VAL keys only when they were computed."""
        out = {"val": self.val, "val_std": self.val_std, "far": self.far, "threshold": self.threshold,
               "measurable": self.measurable, "far_floor": _num(self.far_floor),
               "fold_val": _nums(self.fold_val), "fold_far": _nums(self.fold_far),
               "fold_threshold": _nums(self.fold_threshold)}
        if self.fold_val_train is not None:
            out.update(val_train_folds=self.val_train_folds, val_train_folds_std=self.val_train_folds_std,
                       fold_val_train=_nums(self.fold_val_train))
        return out


@dataclass(frozen=True)
class VerificationResult:
    """The verification protocol's numbers. ``k`` = number of folds; curves are on :data:`ACCURACY_THRESHOLDS`."""

    mode: str
    n_pairs: int  #: pairs given
    n_pairs_used: int  #: pairs evaluated (faithful mode drops the trailing ones)
    n_same: int  #: same-identity pairs among those used
    n_folds: int
    shuffled: bool
    seed: int | None  #: the shuffle seed (None when not shuffled)
    accuracy: float
    accuracy_std: float
    threshold: float  #: mean of the folds' accuracy thresholds
    threshold_std: float
    auc: float  #: over all used pairs (NaN if they hold a single class)
    eer: float
    auc_fold_mean: float  #: mean of the test folds' AUCs over the folds holding both classes (NaN if none)
    auc_folds: int  #: how many folds entered ``auc_fold_mean``
    single_class_folds: int  #: test folds holding only one class
    far_floor: float  #: 1 / (fewest different-identity pairs in any fold's training folds)
    val_at_far: dict[str, ValAtFar]  #: keyed by :func:`far_key` of the target
    fold_accuracy: np.ndarray = field(repr=False)  #: Array[k]
    fold_threshold: np.ndarray = field(repr=False)  #: Array[k]
    fold_auc: np.ndarray = field(repr=False)  #: Array[k], NaN for single-class folds
    tpr: np.ndarray = field(repr=False)  #: Array[400], test-fold TPR averaged over folds (facenet's curve)
    fpr: np.ndarray = field(repr=False)  #: Array[400]

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """Plain JSON-able values (NaN becomes None); ``curves=True`` adds the averaged ROC on the grid."""
        out: dict[str, Any] = {
            "mode": self.mode, "n_pairs": self.n_pairs, "n_pairs_used": self.n_pairs_used, "n_same": self.n_same,
            "n_folds": self.n_folds, "shuffled": self.shuffled, "seed": self.seed,
            "accuracy": _num(self.accuracy), "accuracy_std": _num(self.accuracy_std),
            "threshold": _num(self.threshold), "threshold_std": _num(self.threshold_std),
            "auc": _num(self.auc), "eer": _num(self.eer), "auc_fold_mean": _num(self.auc_fold_mean),
            "auc_folds": self.auc_folds, "single_class_folds": self.single_class_folds,
            "far_floor": _num(self.far_floor),
            "val_at_far": {k: v.to_dict() for k, v in self.val_at_far.items()},
            "fold_accuracy": _nums(self.fold_accuracy), "fold_threshold": _nums(self.fold_threshold),
            "fold_auc": _nums(self.fold_auc),
        }
        if curves:
            out["roc_grid"] = {"thresholds": ACCURACY_THRESHOLDS.tolist(), "tpr": self.tpr.tolist(),
                               "fpr": self.fpr.tolist()}
        return out


def squared_distances(emb_a: np.ndarray, emb_b: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Squared Euclidean distance of each pair.

    Args:
        emb_a (Array[N, D]): first embedding of each pair (real numbers, finite).
        emb_b (Array[N, D]): second embedding of each pair.
        normalize: L2-normalise the rows first (the protocol's embeddings are unit vectors, so ``d`` is in [0, 4]).
            Pass False for embeddings already normalised to reproduce another implementation bit for bit.

    Returns:
        Array[N], float64, computed as facenet does: ``sum((a - b) ** 2, axis=1)``.
    """
    a = as_embeddings(emb_a, "embeddings A")
    b = as_embeddings(emb_b, "embeddings B")
    if a.shape != b.shape:
        raise EvaluationInputError(f"embeddings A and B must have the same shape, got {a.shape} and {b.shape}")
    if normalize:
        a, b = l2_normalize(a, "embeddings A"), l2_normalize(b, "embeddings B")
    return np.sum(np.square(a - b), axis=1)


def used_pairs(n_pairs: int, mode: Mode, batch_images: int = 100) -> int:
    """How many leading pairs a mode evaluates: all in clean mode; ``floor(2N / b) * b / 2`` in faithful mode."""
    _check_mode(mode)
    if mode == "clean":
        return n_pairs
    return (2 * n_pairs // batch_images) * batch_images // 2


def fold_ids(n_pairs: int, n_folds: int, shuffle: bool, seed: int | None = 0) -> np.ndarray:
    """The test fold of every pair, ``Array[N]`` int: scikit-learn ``KFold`` (contiguous unless shuffled).

    The first ``N % k`` folds hold one pair more, as in ``KFold``.
    """
    kfold = KFold(n_splits=n_folds, shuffle=shuffle, random_state=seed if shuffle else None)
    fold = np.empty(n_pairs, dtype=np.int64)
    for f, (_, test) in enumerate(kfold.split(np.empty((n_pairs, 1)))):
        fold[test] = f
    return fold


def evaluate_verification(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    same: np.ndarray,
    *,
    n_folds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    mode: Mode = "clean",
    seed: int = 0,
    shuffle: bool | None = None,
    normalize: bool = True,
    batch_images: int = 100,
    train_fold_val: bool = False,
) -> VerificationResult:
    """Evaluate verification pairs given as two embedding arrays.

    Args:
        emb_a (Array[N, D]): first embedding of each pair.
        emb_b (Array[N, D]): second embedding of each pair.
        same (Array[N], bool): True where the pair shows one identity.
        n_folds: number of folds ``k`` (>= 2).
        far_targets: FAR targets for VAL@FAR, each in (0, 1].
        mode: ``"clean"`` or ``"faithful"`` (see the module docstring).
        seed: shuffle seed (used only when shuffling).
        shuffle: shuffle pairs before folding; None = the mode's default (clean: yes, faithful: no). Pass False in
            clean mode for pair lists whose order defines the folds (LFW's official 10 folds).
        normalize: L2-normalise the embeddings first (see :func:`squared_distances`).
        batch_images: faithful mode's embedding batch size, which sets how many trailing pairs are dropped.
        train_fold_val: also compute VAL on the training folds, the caricature code's VAL (module docstring):
            ``val_train_folds``, ``val_train_folds_std`` and ``fold_val_train`` in every :class:`ValAtFar`.
    """
    dist = squared_distances(emb_a, emb_b, normalize=normalize)
    return evaluate_distances(dist, same, n_folds=n_folds, far_targets=far_targets, mode=mode, seed=seed,
                              shuffle=shuffle, batch_images=batch_images, train_fold_val=train_fold_val)


def evaluate_distances(
    dist: np.ndarray,
    same: np.ndarray,
    *,
    n_folds: int = 10,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    mode: Mode = "clean",
    seed: int = 0,
    shuffle: bool | None = None,
    batch_images: int = 100,
    train_fold_val: bool = False,
) -> VerificationResult:
    """Evaluate verification pairs given as distances ``Array[N]`` (squared Euclidean, smaller = more similar).

    Same arguments as :func:`evaluate_verification`. Raises :class:`EvaluationInputError` for malformed inputs,
    fewer used pairs than folds, or a FAR target outside (0, 1].
    """
    _check_mode(mode)
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 1:
        raise EvaluationInputError(f"distances must be a 1-D array, got shape {dist.shape}")
    if not np.isfinite(dist).all():
        raise EvaluationInputError("distances contain NaN or inf")
    same = as_same(same, len(dist))
    if n_folds < 2:
        raise EvaluationInputError(f"need at least 2 folds, got {n_folds}")
    targets = [float(t) for t in far_targets]
    bad = [t for t in targets if not 0 < t <= 1]
    if bad:
        raise EvaluationInputError(f"FAR targets must be in (0, 1], got {bad[0]}")
    n_pairs = len(dist)
    n_used = used_pairs(n_pairs, mode, batch_images)
    if n_used < n_folds:
        dropped = f" ({mode} mode keeps {n_used} of {n_pairs})" if n_used != n_pairs else ""
        raise EvaluationInputError(f"{n_used} pairs{dropped} are fewer than the {n_folds} folds")
    dist, same = dist[:n_used], same[:n_used]
    shuffled = (mode == "clean") if shuffle is None else bool(shuffle)
    fold = fold_ids(n_used, n_folds, shuffled, seed)
    cls = same.astype(np.int64)  # 0 = different identity, 1 = same identity

    # per fold and class: pairs (F, 2); accepted pairs at every grid threshold (F, 2, T)
    n_fc = np.bincount(fold * 2 + cls, minlength=2 * n_folds).reshape(n_folds, 2)
    n_train = n_fc.sum(axis=0) - n_fc  # (F, 2)
    acc = _accuracy(dist, cls, fold, n_fc, n_train)
    vals = {far_key(t): _val_at_far(t, dist, cls, fold, n_fc, n_train, mode, train_fold_val) for t in targets}
    auc, eer = auc_eer(dist, same)
    fold_auc = np.array([auc_eer(dist[fold == f], same[fold == f])[0] for f in range(n_folds)])
    defined = np.isfinite(fold_auc)
    min_neg = int(n_train[:, 0].min())
    return VerificationResult(
        mode=mode, n_pairs=n_pairs, n_pairs_used=n_used, n_same=int(same.sum()), n_folds=n_folds,
        shuffled=shuffled, seed=seed if shuffled else None,
        accuracy=float(np.mean(acc["fold_accuracy"])), accuracy_std=float(np.std(acc["fold_accuracy"])),
        threshold=float(np.mean(acc["fold_threshold"])), threshold_std=float(np.std(acc["fold_threshold"])),
        auc=auc, eer=eer, auc_fold_mean=float(np.mean(fold_auc[defined])) if defined.any() else float("nan"),
        auc_folds=int(defined.sum()), single_class_folds=int(np.count_nonzero((n_fc == 0).any(axis=1))),
        far_floor=1.0 / min_neg if min_neg else float("inf"), val_at_far=vals,
        fold_accuracy=acc["fold_accuracy"], fold_threshold=acc["fold_threshold"], fold_auc=fold_auc,
        tpr=acc["tpr"], fpr=acc["fpr"],
    )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise EvaluationInputError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")


def _accepted(dist: np.ndarray, cls: np.ndarray, fold: np.ndarray, n_folds: int, grid: np.ndarray) -> np.ndarray:
    """Pairs with ``d < grid[j]`` per fold and class: ``Array[F, 2, T]`` int (class 0 = different, 1 = same).

    A pair is accepted from the first grid index whose threshold exceeds its distance on, so one histogram of those
    indices per (fold, class), summed cumulatively, counts every threshold at once.
    """
    n_t = len(grid)
    first = np.searchsorted(grid, dist, side="right")  # number of thresholds <= d; accepted for j >= first
    key = ((fold * 2 + cls) * (n_t + 1)) + first
    hist = np.bincount(key, minlength=n_folds * 2 * (n_t + 1)).reshape(n_folds, 2, n_t + 1)
    return np.cumsum(hist, axis=2)[:, :, :n_t]


def _accuracy(dist: np.ndarray, cls: np.ndarray, fold: np.ndarray, n_fc: np.ndarray,
              n_train: np.ndarray) -> dict[str, np.ndarray]:
    """Per-fold accuracy at the first training-optimal grid threshold, and facenet's averaged test ROC."""
    grid = ACCURACY_THRESHOLDS
    n_folds = len(n_fc)
    acc_test = _accepted(dist, cls, fold, n_folds, grid)  # (F, 2, T)
    acc_train = acc_test.sum(axis=0, keepdims=True) - acc_test
    # correct on the training folds = accepted same pairs + rejected different pairs (integers: ties are exact)
    correct_train = acc_train[:, 1] + (n_train[:, 0:1] - acc_train[:, 0])  # (F, T)
    best = np.argmax(correct_train, axis=1)  # first maximiser
    rows = np.arange(n_folds)
    correct_test = acc_test[rows, 1, best] + n_fc[:, 0] - acc_test[rows, 0, best]
    fold_accuracy = correct_test / n_fc.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(n_fc[:, 1:2] > 0, acc_test[:, 1] / n_fc[:, 1:2], 0.0)  # facenet: 0 when undefined
        fpr = np.where(n_fc[:, 0:1] > 0, acc_test[:, 0] / n_fc[:, 0:1], 0.0)
    return {"fold_accuracy": fold_accuracy, "fold_threshold": grid[best], "tpr": tpr.mean(axis=0),
            "fpr": fpr.mean(axis=0)}


def _val_at_far(target: float, dist: np.ndarray, cls: np.ndarray, fold: np.ndarray, n_fc: np.ndarray,
                n_train: np.ndarray, mode: str, train_fold_val: bool = False) -> ValAtFar:
    grid = VAL_THRESHOLDS
    n_folds = len(n_fc)
    fa_test = _accepted(dist, cls, fold, n_folds, grid)[:, 0]  # (F, T) accepted different pairs
    fa_train = fa_test.sum(axis=0, keepdims=True) - fa_test
    with np.errstate(divide="ignore", invalid="ignore"):
        far_train = fa_train / n_train[:, 0:1]  # NaN rows where a fold's training folds hold no different pair
    if mode == "faithful":
        thr = np.where(far_train.max(axis=1) >= target, _slinear_scipy181(far_train, grid, target), 0.0)
        thr = np.where(n_train[:, 0] > 0, thr, np.nan)
    else:
        thr = _largest_within(far_train, grid, target)
    accepted = dist < thr[fold]  # NaN thresholds accept nothing; those folds are NaN below anyway
    ta = np.bincount(fold[accepted & (cls == 1)], minlength=n_folds)
    fa = np.bincount(fold[accepted & (cls == 0)], minlength=n_folds)
    with np.errstate(divide="ignore", invalid="ignore"):
        fold_val = np.where(n_fc[:, 1] > 0, ta / n_fc[:, 1], np.nan)
        fold_far = np.where(n_fc[:, 0] > 0, fa / n_fc[:, 0], np.nan)
    fold_val = np.where(np.isfinite(thr), fold_val, np.nan)
    fold_far = np.where(np.isfinite(thr), fold_far, np.nan)
    min_neg = int(n_train[:, 0].min())
    floor = 1.0 / min_neg if min_neg else float("inf")
    measurable = bool(target >= floor)
    ok_val, ok_far, ok_thr = np.isfinite(fold_val), np.isfinite(fold_far), np.isfinite(thr)
    train: dict[str, Any] = {}
    if train_fold_val:
        # same pairs accepted on fold f's training folds = all same pairs with d < thr[f], less fold f's own
        same_sorted = np.sort(dist[cls == 1])
        ta_all = np.searchsorted(same_sorted, np.where(ok_thr, thr, -np.inf), side="left")
        with np.errstate(divide="ignore", invalid="ignore"):
            fold_val_train = np.where(ok_thr & (n_train[:, 1] > 0), (ta_all - ta) / n_train[:, 1], np.nan)
        ok_train = np.isfinite(fold_val_train)
        use = measurable and ok_train.any()
        train = {"fold_val_train": fold_val_train,
                 "val_train_folds": float(np.mean(fold_val_train[ok_train])) if use else None,
                 "val_train_folds_std": float(np.std(fold_val_train[ok_train])) if use else None}
    return ValAtFar(
        target=target, measurable=measurable, far_floor=floor,
        val=float(np.mean(fold_val[ok_val])) if measurable and ok_val.any() else None,
        val_std=float(np.std(fold_val[ok_val])) if measurable and ok_val.any() else None,
        far=float(np.mean(fold_far[ok_far])) if measurable and ok_far.any() else None,
        threshold=float(np.mean(thr[ok_thr])) if measurable and ok_thr.any() else None,
        fold_val=fold_val, fold_far=fold_far, fold_threshold=thr, **train,
    )


def _largest_within(far: np.ndarray, grid: np.ndarray, target: float) -> np.ndarray:
    """Clean mode: per row of ``far`` (Array[F, T], non-decreasing), the largest grid threshold whose FAR is
    <= ``target``, linearly interpolated towards the next grid point; the last grid point if none exceeds it.
    """
    n_t = far.shape[1]
    i = np.count_nonzero(far <= target, axis=1) - 1  # far[:, 0] = 0 <= target, so i >= 0 (unless the row is NaN)
    i = np.clip(i, 0, n_t - 1)
    j = np.minimum(i + 1, n_t - 1)
    rows = np.arange(len(far))
    x0, x1 = far[rows, i], far[rows, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(x1 > x0, (target - x0) / (x1 - x0), 0.0)
    out = grid[i] + w * (grid[j] - grid[i])
    return np.where(np.isnan(far[:, 0]), np.nan, out)


def _slinear_scipy181(x: np.ndarray, y: np.ndarray, x_new: float) -> np.ndarray:
    """``interp1d(x[f], y, kind='slinear')(x_new)`` for every row ``f``, as scipy <= 1.8.1 computes it.

    scipy builds a degree-1 B-spline with knots ``r_[x0, x, x_last]`` and coefficients ``y`` (after a stable sort;
    the rows here are already non-decreasing) and evaluates it with de Boor's recursion on the knot interval
    ``t[l] <= x_new < t[l + 1]`` (the last interval at the right end). With tied ``x`` that interval starts at the
    last of the ties; a degenerate last interval (duplicated maximum) evaluates to 0. The arithmetic below follows
    de Boor's for k = 1 step by step so that the result matches scipy's to the last bit.

    Args:
        x (Array[F, T]): non-decreasing rows (training FAR per threshold); ``x_new`` lies in ``[x[f, 0], x[f, -1]]``
            wherever the caller uses the result.
        y (Array[T]): the values (thresholds).
    """
    n_t = x.shape[1]
    i = np.count_nonzero(x <= x_new, axis=1) - 1  # last index with x <= x_new
    i = np.clip(i, 0, n_t - 2)
    rows = np.arange(len(x))
    xa, xb = x[rows, i], x[rows, i + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 1.0 / (xb - xa)
        h0 = w * (xb - x_new)
        h1 = w * (x_new - xa)
        out = y[i] * h0 + y[i + 1] * h1
    return np.where(xb == xa, 0.0, out)
