"""The evaluation library: hand-computed cases, properties, the facenet reference fixture, AUC/EER against
scikit-learn, expression metrics and Rank-k identification."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
from scipy.interpolate import BSpline, interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.evaluation import (
    EvaluationInputError,
    evaluate_classification,
    evaluate_distances,
    evaluate_identification,
    evaluate_verification,
    first_hit_rank,
    predict,
    squared_distances,
)
from pipeline.evaluation.roc import auc_eer
from pipeline.evaluation.verification import _slinear_scipy181, fold_ids, used_pairs
from tests.conftest import REPO

FIXTURE = REPO / "tests/fixtures/evaluation/facenet_reference.json"


# --- the fixture's input recipe (identical to the generator quoted in tests/fixtures/evaluation/README.md) ---------
def make_case(n_pairs, dim, seed, layout, kind, spread, dup_fraction, **_):
    """Seeded pairs: embeddings a, b (N, dim) float64, unit norm; same (N,) bool."""
    rng = np.random.default_rng(seed)
    n = n_pairs
    if layout == "sorted":  # like the original expression pair file: all same-identity pairs first
        same = np.arange(n) < n // 2
    elif layout == "lfw":  # like LFW pairs.txt: 20 alternating blocks, same then different
        same = (np.arange(n) * 20 // n) % 2 == 0
    else:
        same = rng.random(n) < 0.5
    if kind == "codebook":  # exact unit vectors: distances are exactly 0, 1, 2, 3 or 4 (grid hits and ties)
        book = np.vstack([np.eye(dim), -np.eye(dim), np.array(list(itertools.product([-0.5, 0.5], repeat=dim)))])
        ia = rng.integers(len(book), size=n)
        ib = rng.integers(len(book), size=n)
        near = book @ book.T >= 0.5
        for i in np.flatnonzero(same):
            choices = np.flatnonzero(near[ia[i]])
            ib[i] = choices[rng.integers(len(choices))]
        a, b = book[ia], book[ib]
    else:
        a = rng.standard_normal((n, dim))
        noise = rng.standard_normal((n, dim))
        other = rng.standard_normal((n, dim))
        b = np.where(same[:, None], a + spread * noise, other)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n_dup = int(dup_fraction * n)  # exact duplicate pairs (tied distances), each copied from a pair of its class
    for dst in rng.choice(n, size=n_dup, replace=False):
        pool = np.flatnonzero(same == same[dst])
        src = pool[rng.integers(len(pool))]
        a[dst], b[dst] = a[src], b[src]
    return a, b, same


def inputs_sha256(a, b, same) -> str:
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64), same.astype(np.uint8)):
        h.update(arr.tobytes())
    return h.hexdigest()


def reference_cases() -> list[dict]:
    return json.loads(FIXTURE.read_text())["cases"]


def _none_to_nan(xs) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in xs], dtype=float)


# --- hand-computed verification ---------------------------------------------------------------------------------
def test_squared_distances_by_hand():
    a = np.array([[3.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [-5.0, 0.0], [0.0, 0.5]])
    assert squared_distances(a, b).tolist() == [0.0, 2.0, 4.0, 0.0]  # normalised first: [0, 4] range
    assert squared_distances(a, b, normalize=False).tolist() == [4.0, 2.0, 36.0, 2.25]


def test_accuracy_and_threshold_by_hand():
    # two contiguous folds: fold 0 = pairs 0-1, fold 1 = pairs 2-3
    dist = np.array([0.2, 1.0, 0.5, 1.5])
    same = np.array([True, False, True, False])
    r = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[])
    # fold 0 trains on d(same)=0.5, d(diff)=1.5: first perfect threshold is 0.51 (0.5 < 0.5 is false), test acc 1
    # fold 1 trains on 0.2 / 1.0: threshold 0.21, which rejects the test same pair at 0.5: acc 1/2
    assert r.fold_threshold == pytest.approx([0.51, 0.21])
    assert r.fold_accuracy.tolist() == [1.0, 0.5]
    assert r.accuracy == 0.75 and r.accuracy_std == 0.25 and r.threshold == pytest.approx(0.36)
    assert r.n_pairs_used == 4 and not r.shuffled and r.seed is None
    # the whole ROC: order by distance S(0.2) S(0.5) D(1.0) D(1.5) is perfectly separated
    assert r.auc == 1.0 and r.eer == 0.0


def test_first_maximiser_and_strict_comparison():
    # same pairs at distance exactly 0: the threshold 0 accepts nothing (0 < 0 is false), 0.01 is the first best
    dist = np.array([0.0, 0.0, 3.0, 3.0])
    same = np.array([True, False, True, False])  # fold 0 = (S 0, D 0), fold 1 = (S 3, D 3): nothing separates
    r = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[])
    # every threshold gives training accuracy 1/2, so the first grid value (0) wins in both folds
    assert r.fold_threshold.tolist() == [0.0, 0.0] and r.accuracy == 0.5
    dist = np.array([0.0, 2.0, 0.0, 2.0])
    same = np.array([True, False, True, False])
    r = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[])
    assert r.fold_threshold == pytest.approx([0.01, 0.01]) and r.accuracy == 1.0


def _val_case():
    # fold 0: 2 same, 4 different; fold 1: 2 same, 4 different (contiguous, unshuffled)
    dist = np.array([0.05, 0.06, 0.1005, 0.2005, 0.3005, 0.4005, 0.15, 0.25, 0.19, 0.5, 1.0, 2.0])
    same = np.array([True, True, False, False, False, False, True, True, False, False, False, False])
    return dist, same


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_val_at_far_by_hand(mode):
    dist, same = _val_case()
    r = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[0.3, 0.2], mode=mode,
                           batch_images=2)  # faithful keeps all 12 pairs with 2-image batches
    v = r.val_at_far["0.3"]
    # fold 1 trains on fold 0's different pairs (0.1005 .. 0.4005): FAR = 1/4 for t in [0.101, 0.200], 1/2 at
    # 0.201; the largest grid threshold with FAR <= 0.3 is 0.200, plus 0.05 / 0.25 of a grid step: 0.2002.
    # fold 0 trains on 0.19, 0.5, 1, 2: FAR = 1/4 up to t = 0.500, 1/2 at 0.501: threshold 0.5002.
    assert v.fold_threshold == pytest.approx([0.5002, 0.2002], abs=1e-12)
    # fold 0 test: both same (0.05, 0.06) and all 4 different pairs below 0.5002; fold 1: 0.15 of 0.15/0.25,
    # 0.19 of the 4 different
    assert v.fold_val.tolist() == [1.0, 0.5] and v.fold_far.tolist() == [1.0, 0.25]
    assert v.measurable and v.far_floor == 0.25
    assert (v.val, v.val_std, v.far) == (0.75, 0.25, 0.625)
    assert v.threshold == pytest.approx(0.3502)
    low = r.val_at_far["0.2"]  # below 1/4: not measurable, no summary numbers, per-fold values still there
    assert not low.measurable and low.val is None and low.val_std is None and low.far is None
    assert low.far_floor == 0.25 and np.isfinite(low.fold_val).all()
    d = r.to_dict()
    assert d["val_at_far"]["0.2"]["val"] is None and d["val_at_far"]["0.2"]["measurable"] is False
    assert d["far_floor"] == 0.25
    # fold 1's threshold depends on fold 0 only: a test pair exactly at it is rejected (d < t is strict)
    dist[6] = v.fold_threshold[1]
    again = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[0.3], mode=mode, batch_images=2)
    assert again.val_at_far["0.3"].fold_threshold[1] == v.fold_threshold[1]
    assert again.val_at_far["0.3"].fold_val.tolist() == [1.0, 0.0]


def test_val_target_above_every_training_far():
    # a different pair at 3.9995 is never accepted on the grid (largest threshold 3.999): train FAR < 1 = target
    dist = np.array([0.1, 3.9995, 0.1, 3.9995])
    same = np.array([True, False, True, False])
    kw = dict(n_folds=2, shuffle=False, far_targets=[1.0], batch_images=2)
    faithful = evaluate_distances(dist, same, mode="faithful", **kw).val_at_far["1.0"]
    clean = evaluate_distances(dist, same, mode="clean", **kw).val_at_far["1.0"]
    assert faithful.fold_threshold.tolist() == [0.0, 0.0] and faithful.val == 0.0  # facenet: threshold 0
    assert clean.fold_threshold == pytest.approx([3.999, 3.999]) and clean.val == 1.0  # the largest threshold


# --- properties ----------------------------------------------------------------------------------------------------
def _random_pairs(n=400, dim=8, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    a = rng.standard_normal((n, dim))
    b = np.where(same[:, None], a + spread * rng.standard_normal((n, dim)), rng.standard_normal((n, dim)))
    return a, b, same


def test_permuting_pairs_within_a_fold_changes_nothing():
    a, b, same = _random_pairs(n=400)
    base = evaluate_verification(a, b, same, mode="faithful")  # contiguous folds of 40 pairs
    rng = np.random.default_rng(1)
    perm = np.concatenate([f * 40 + rng.permutation(40) for f in range(10)])
    moved = evaluate_verification(a[perm], b[perm], same[perm], mode="faithful")
    assert moved.fold_accuracy.tolist() == base.fold_accuracy.tolist()
    assert moved.fold_threshold.tolist() == base.fold_threshold.tolist()
    for key in base.val_at_far:
        assert moved.val_at_far[key].fold_val.tolist() == base.val_at_far[key].fold_val.tolist()
    assert moved.auc == pytest.approx(base.auc, abs=1e-12) and moved.eer == pytest.approx(base.eer, abs=1e-12)
    # swapping the sides of every pair changes nothing either
    swapped = evaluate_verification(b, a, same, mode="faithful")
    assert swapped.fold_accuracy.tolist() == base.fold_accuracy.tolist()


def test_identical_embeddings_give_accuracy_one():
    a, b, same = _random_pairs(n=300, seed=2)
    b = np.where(same[:, None], a, b)
    r = evaluate_verification(a, b, same)
    assert r.accuracy == 1.0 and r.accuracy_std == 0.0 and r.auc == 1.0 and r.eer == 0.0
    assert r.fold_threshold.tolist() == [0.01] * 10  # the first threshold accepting d = 0


def test_clean_mode_is_seeded_and_uses_every_pair():
    a, b, same = _random_pairs(n=397, seed=3, spread=1.5)
    r1 = evaluate_verification(a, b, same, seed=7)
    r2 = evaluate_verification(a, b, same, seed=7)
    r3 = evaluate_verification(a, b, same, seed=8)
    assert r1.n_pairs_used == 397 and r1.shuffled and r1.seed == 7
    assert r1.to_dict() == r2.to_dict()
    assert r1.fold_accuracy.tolist() != r3.fold_accuracy.tolist()
    assert r1.auc == r3.auc  # fold-free
    folds = fold_ids(397, 10, shuffle=True, seed=7)
    assert np.bincount(folds).tolist() == [40] * 7 + [39] * 3
    assert not np.array_equal(folds, np.sort(folds))
    assert np.array_equal(fold_ids(397, 10, shuffle=False), np.sort(folds))


def test_faithful_drops_trailing_pairs():
    assert used_pairs(384, "faithful") == 350  # Oulu-CASIA fold 4: 768 images -> 700 embedded
    assert used_pairs(6000, "faithful") == 6000 and used_pairs(60, "faithful") == 50
    assert used_pairs(384, "clean") == 384
    a, b, same = _random_pairs(n=384, seed=4)
    r = evaluate_verification(a, b, same, mode="faithful")
    assert (r.n_pairs, r.n_pairs_used) == (384, 350)
    same_tail = same.copy()
    same_tail[350:] = ~same_tail[350:]  # the dropped pairs cannot matter
    assert evaluate_verification(a, b, same_tail, mode="faithful").to_dict() == r.to_dict()
    with pytest.raises(EvaluationInputError, match="faithful mode keeps 0 of 40"):
        evaluate_verification(a[:40], b[:40], same[:40], mode="faithful")


def test_single_class_folds_do_not_crash():
    a, b, same = _random_pairs(n=300, seed=5)
    order = np.argsort(~same, kind="stable")  # sorted: all same pairs first, like the original pair file
    a, b, same = a[order], b[order], same[order]
    r = evaluate_verification(a, b, same, mode="faithful", batch_images=2)
    n_same = int(same.sum())
    mixed = {n_same // 30}  # the one fold of 30 pairs straddling the class boundary (if it is not on a border)
    assert r.single_class_folds == 10 - len(mixed)
    assert r.auc_folds == len(mixed) and np.isfinite(r.fold_auc).sum() == len(mixed)
    assert r.auc_fold_mean == r.fold_auc[np.isfinite(r.fold_auc)].mean()
    assert np.isfinite(r.auc) and 0 <= r.accuracy <= 1
    v = r.val_at_far["0.01"]
    assert np.isnan(v.fold_val[-1]) and np.isnan(v.fold_far[0])  # no same pairs / no different pairs in the fold
    json.dumps(r.to_dict(curves=True), allow_nan=False)  # NaN became None


def test_bad_inputs_raise_clear_errors():
    a, b, same = _random_pairs(n=50)
    with pytest.raises(EvaluationInputError, match="same shape"):
        evaluate_verification(a, b[:, :4], same)
    with pytest.raises(EvaluationInputError, match="dtype bool"):
        evaluate_verification(a, b, same.astype(int))
    with pytest.raises(EvaluationInputError, match=r"shape \(50,\)"):
        evaluate_verification(a, b, same[:49])
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(EvaluationInputError, match="NaN or inf in 1 row.*first row 3"):
        evaluate_verification(bad, b, same)
    zero = a.copy()
    zero[5] = 0
    with pytest.raises(EvaluationInputError, match="all-zero row"):
        evaluate_verification(zero, b, same)
    with pytest.raises(EvaluationInputError, match="fewer than the 10 folds"):
        evaluate_verification(a[:9], b[:9], same[:9])
    with pytest.raises(EvaluationInputError, match=r"FAR targets must be in \(0, 1\]"):
        evaluate_verification(a, b, same, far_targets=[0.0])
    with pytest.raises(EvaluationInputError, match="unknown mode"):
        evaluate_verification(a, b, same, mode="original")
    assert issubclass(EvaluationInputError, ValueError)


# --- the reference implementation (facenet 1.0.5) ----------------------------------------------------------------
@pytest.mark.parametrize("case", reference_cases(), ids=lambda c: c["name"])
def test_faithful_mode_matches_facenet(case):
    a, b, same = make_case(**case)
    assert inputs_sha256(a, b, same) == case["inputs_sha256"], "the input recipe no longer reproduces the fixture"
    if "inputs" in case:
        assert a.tolist() == case["inputs"]["a"] and same.tolist() == case["inputs"]["same"]
    r = evaluate_verification(a, b, same, mode="faithful", normalize=False)
    assert r.n_pairs_used == case["n_pairs_used"] and r.n_same == case["n_same_used"]
    roc = case["roc"]
    np.testing.assert_array_equal(r.fold_accuracy, roc["accuracy"])
    np.testing.assert_array_equal(r.fold_threshold, roc["best_threshold"])
    assert r.accuracy == pytest.approx(roc["accuracy_mean"], abs=1e-15)
    assert r.accuracy_std == pytest.approx(roc["accuracy_std"], abs=1e-15)
    np.testing.assert_allclose(r.tpr, roc["tpr"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.fpr, roc["fpr"], rtol=0, atol=1e-15)
    for key, ref in case["val"].items():
        v = r.val_at_far[key]
        np.testing.assert_allclose(v.fold_threshold, ref["fold_threshold"], rtol=1e-15, atol=0)
        ref_val, ref_far = _none_to_nan(ref["fold_val"]), _none_to_nan(ref["fold_far"])
        ok = np.isfinite(ref_val)  # facenet divides by zero on a single-class test fold (its VAL and FAR fail)
        np.testing.assert_array_equal(v.fold_val[ok], ref_val[ok])
        np.testing.assert_array_equal(v.fold_far[ok], ref_far[ok])
        assert (np.isnan(v.fold_val[~ok]) | np.isnan(v.fold_far[~ok])).all()
        if not ref["reference_crashes"]:
            assert ok.all() and v.far_floor <= float(key) or not v.measurable
            raw_val, raw_std = np.mean(v.fold_val), np.std(v.fold_val)
            assert raw_val == pytest.approx(ref["val_mean"], abs=1e-15)
            assert raw_std == pytest.approx(ref["val_std"], abs=1e-15)
            assert np.mean(v.fold_far) == pytest.approx(ref["far_mean"], abs=1e-15)
            if v.measurable:
                assert v.val == pytest.approx(ref["val_mean"], abs=1e-15)
                assert v.far == pytest.approx(ref["far_mean"], abs=1e-15)


def test_reference_covers_ties_single_class_folds_and_measurability():
    cases = {c["name"]: c for c in reference_cases()}
    a, b, same = make_case(**cases["codebook_sorted_60"])
    d = squared_distances(a, b, normalize=False)
    assert set(np.unique(d)) <= {0.0, 1.0, 2.0, 3.0, 4.0}  # exact grid hits, many ties
    assert cases["gauss_sorted_384"]["n_pairs_used"] == 350 and cases["gauss_sorted_384"]["val"]["0.01"][
        "reference_crashes"]
    r = evaluate_verification(*make_case(**cases["gauss_random_997"]), mode="faithful", normalize=False)
    assert not r.val_at_far["0.001"].measurable and r.val_at_far["0.01"].measurable  # 1/415 > 0.001


def test_slinear_emulation_matches_scipy_bspline():
    """facenet's interp1d(kind='slinear') = scipy<=1.8.1's degree-1 B-spline on knots r_[x0, x, x_last]."""
    rng = np.random.default_rng(0)
    y = np.arange(0, 4, 0.001)
    for trial in range(30):
        steps = rng.integers(0, 3, size=len(y)) * (rng.random(len(y)) < 0.05)  # long plateaus = tied FARs
        x = np.cumsum(steps) / max(1, steps.sum())
        targets = np.r_[rng.random(5) * x[-1], np.unique(x)[:5], x[-1]]
        for target in targets:
            spline = BSpline.construct_fast(np.r_[x[0], x, x[-1]], y.copy(), 1)
            assert _slinear_scipy181(x[None], y, float(target))[0] == float(spline(target)), (trial, target)
    x = np.sort(rng.random(50))  # no ties: today's interp1d agrees too
    got = _slinear_scipy181(x[None], np.arange(50.0), 0.5)[0]
    assert got == pytest.approx(float(interp1d(x, np.arange(50.0), kind="slinear")(0.5)), abs=1e-12)


# --- AUC and EER against scikit-learn ----------------------------------------------------------------------------
def test_auc_eer_by_hand():
    auc, eer = auc_eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, False, True, False]))
    assert auc == 0.75 and eer == 0.5
    assert all(np.isnan(auc_eer(np.array([0.1, 0.2]), np.array([True, True]))))


@pytest.mark.parametrize("seed", range(5))
def test_auc_eer_match_sklearn_and_brentq(seed):
    a, b, same = _random_pairs(n=500, seed=seed, spread=1.4)
    d = squared_distances(a, b)
    d[::7] = np.round(d[::7], 1)  # some ties
    auc, eer = auc_eer(d, same)
    assert auc == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    fpr, tpr, _ = roc_curve(same, -d, drop_intermediate=False)
    fpr_u, idx = np.unique(fpr, return_index=True)  # facenet's brentq on interp1d(fpr, tpr) (ties made unique)
    tpr_u = np.maximum.reduceat(tpr, idx)
    ref = brentq(lambda x: 1.0 - x - np.interp(x, fpr_u, tpr_u), 0.0, 1.0)
    assert eer == pytest.approx(ref, abs=1.0 / min(same.sum(), (~same).sum()))
    r = evaluate_distances(d, same)
    assert (r.auc, r.eer) == (auc, eer)


# --- expression ------------------------------------------------------------------------------------------------------
def test_expression_metrics_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 0, 1, 1, 0])
    r = evaluate_classification(y_true, y_pred, n_classes=4, class_names=["a", "b", "c", "d"])
    assert r.confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert r.accuracy == pytest.approx(4 / 6)
    np.testing.assert_allclose(r.per_class_accuracy[:3], [2 / 3, 1.0, 0.0])
    assert np.isnan(r.per_class_accuracy[3]) and np.isnan(r.confusion_normalized[3]).all()
    np.testing.assert_allclose(r.confusion_normalized[0], [2 / 3, 1 / 3, 0, 0])
    d = r.to_dict()
    assert d["per_class_accuracy"][3] is None and d["class_names"] == ["a", "b", "c", "d"]
    json.dumps(d, allow_nan=False)


def test_expression_argmax_ties_go_to_lowest_index():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # ReLU'd logits
    assert predict(scores).tolist() == [0, 1, 0, 2]
    r = evaluate_classification(np.array([0, 2, 0, 2]), scores)
    assert r.accuracy == 0.75 and r.confusion.shape == (3, 3)
    with pytest.raises(EvaluationInputError, match=r"lie in \[0, 3\)"):
        evaluate_classification(np.array([0, 3]), np.array([0, 1]), n_classes=3)


# --- identification --------------------------------------------------------------------------------------------------
def _unit(deg):
    rad = np.deg2rad(np.atleast_1d(deg))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_rank_k_on_a_tiny_gallery():
    gallery = _unit([0, 90, 180, 270])
    gallery_labels = np.array([0, 1, 2, 3])
    probe = _unit([10, 100, 45, 200, 0])
    probe_labels = np.array([1, 1, 1, 2, 9])
    ranks = first_hit_rank(probe, probe_labels, gallery, gallery_labels)
    # 10 deg: nearest 0 (label 0) then 90 (label 1) -> rank 2; 100 deg -> rank 1; 45 deg: tie between 0 and 90,
    # broken by gallery index -> label 0 first, rank 2; 200 deg -> 180 first; label 9 is not in the gallery -> G + 1
    assert ranks.tolist() == [2, 1, 2, 1, 5]
    r = evaluate_identification([(probe, probe_labels, gallery, gallery_labels),
                                 (probe[:2], probe_labels[:2], gallery, gallery_labels)], ks=(1, 2))
    assert r.per_split.tolist() == [[0.4, 0.8], [0.5, 1.0]]
    assert r.mean == {1: pytest.approx(0.45), 2: pytest.approx(0.9)}
    assert r.std == {1: pytest.approx(0.05), 2: pytest.approx(0.1)}
    assert r.to_dict()["rank"]["1"]["per_split"] == [0.4, 0.5]


def test_rank_k_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    probe, gallery = rng.standard_normal((37, 5)), rng.standard_normal((23, 5))
    pl, gl = rng.integers(0, 6, 37), rng.integers(0, 6, 23)
    ranks = first_hit_rank(probe, pl, gallery, gl, normalize=False, chunk=8)
    for i in range(37):
        d = ((gallery - probe[i]) ** 2).sum(1)
        order = np.argsort(d, kind="stable")
        hits = np.flatnonzero(gl[order] == pl[i])
        assert ranks[i] == (hits[0] + 1 if len(hits) else 24)


def test_far_keys_are_plain_decimals():
    from pipeline.evaluation.verification import far_key

    assert [far_key(t) for t in (1e-3, 1e-2, 1e-5, 3e-4)] == ["0.001", "0.01", "0.00001", "0.0003"]
