"""The caricature paper's evaluation protocols: the original's strided Rank-n (identification) and VAL on the
training folds (verification), against hand-computed cases, a literal transcription of the original loop, and the
reference fixture made with the caricature code's own ``calculate_val`` (tests/fixtures/evaluation/README.md)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.evaluation import EvaluationInputError, evaluate_distances, evaluate_identification, evaluate_verification
from pipeline.evaluation.identification import (
    IdentificationResult,
    nearest_matches,
    strided_rank_accuracy,
    strided_rank_hits,
)
from pipeline.evaluation.verification import far_key, fold_ids, used_pairs
from tests.conftest import REPO

FIXTURE = REPO / "tests/fixtures/evaluation/cari_val_train_folds_reference.json"


# --- identification: the original's Rank-n as coded ----------------------------------------------------------------
def _unit(deg):
    rad = np.deg2rad(np.atleast_1d(deg))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def _three_probes():
    """Gallery at 0, 90, 180, 270 degrees with labels 0..3; three probes."""
    gallery, gallery_labels = _unit([0, 90, 180, 270]), np.array([0, 1, 2, 3])
    probe, probe_labels = _unit([30, 120, 200]), np.array([1, 3, 2])
    return probe, probe_labels, gallery, gallery_labels


def test_strided_rank_by_hand():
    probe, pl, gallery, gl = _three_probes()
    # nearest first (angle to each gallery item):
    #   p0 at 30, label 1:  0 (30), 90 (60), 270 (120), 180 (150) -> labels 0 1 3 2 -> F T F F  (rank 2)
    #   p1 at 120, label 3: 90 (30), 180 (60), 0 (120), 270 (150) -> labels 1 2 0 3 -> F F F T  (rank 4)
    #   p2 at 200, label 2: 180 (20), 270 (70), 90 (110), 0 (160) -> labels 2 3 1 0 -> T F F F  (rank 1)
    m = nearest_matches(probe, pl, gallery, gl, n=4)
    assert m.tolist() == [[False, True, False, False], [False, False, False, True], [True, False, False, False]]
    # n = 2: correct_prediction = [F T | F F | T F] (flat indices 0..5)
    #   p0 reads [0::2] = idx 0, 2, 4 = F F T -> hit (its own F T is a hit too)
    #   p1 reads [1::2] = idx 1, 3, 5 = T F F -> hit (its own F F is a miss: inflated)
    #   p2 reads [2::2] = idx 2, 4    = F T   -> hit (its own T F)
    assert strided_rank_hits(m, 2).tolist() == [True, True, True]
    # n = 3: correct_prediction = [F T F | F F F | T F F] (flat indices 0..8)
    #   p0 reads [0::3] = idx 0, 3, 6 = F F T -> hit
    #   p1 reads [1::3] = idx 1, 4, 7 = T F F -> hit (its own F F F is a miss)
    #   p2 reads [2::3] = idx 2, 5, 8 = F F F -> miss (its own T F F is a hit: deflated)
    assert strided_rank_hits(m, 3).tolist() == [True, True, False]
    r = evaluate_identification([(probe, pl, gallery, gl)], ks=(1, 2, 3, 4, 5))
    # ours: ranks 2, 4, 1
    assert r.per_split.tolist() == [[1 / 3, 2 / 3, 2 / 3, 1.0, 1.0]]
    # as coded: Rank-1 = argmin (p2 only), Rank-2 = 3/3, Rank-3 = 2/3; Rank-4: i // 4 = 0, so probe i reads column
    # i of all three probes: p0 column 0 (p2's T) hit, p1 column 1 (p0's T) hit, p2 column 2 (F F F) miss = 2/3
    # (ours 3/3); Rank-5 > G = 4 is undefined
    assert strided_rank_hits(m, 4).tolist() == [True, True, False]
    np.testing.assert_array_equal(r.strided_per_split, [[1 / 3, 1.0, 2 / 3, 2 / 3, np.nan]])
    assert r.strided_mean[2] == 1.0 and r.strided_std[2] == 0.0 and np.isnan(r.strided_mean[5])
    d = r.to_dict()
    assert d["rank_strided"]["2"] == {"mean": 1.0, "std": 0.0, "per_split": [1.0]}
    assert d["rank_strided"]["5"] == {"mean": None, "std": None, "per_split": [None]}
    assert d["rank_strided"]["1"]["mean"] == d["rank"]["1"]["mean"] == pytest.approx(1 / 3)
    json.dumps(d, allow_nan=False)


def _original_rank_n(probe, probe_labels, gallery, gallery_labels, n):
    """evaluate_webcavi_identify.py rank_n, lines 193-219, transcribed; argpartition replaced by the stable sort,
    and the double loop of lines 194-200 (``np.sum(np.square(probe[i] - gallery[j]))``) by one broadcast."""
    dist_emb_prob_array = np.sum(np.square(probe[:, None, :] - gallery[None, :, :]), axis=2)
    rank1_idx = np.argmin(dist_emb_prob_array, 1)
    label_list_id_probe_predict = [gallery_labels[i] for i in rank1_idx]
    rank1_acc = np.mean(np.equal(label_list_id_probe_predict, probe_labels))
    label_list_id_probe_predict = []
    rank_n_idx = np.argsort(dist_emb_prob_array, 1, kind="stable")  # the original: np.argpartition(..., n, 1)
    for i in range(rank_n_idx.shape[0]):
        label_list_id_probe_predict += [gallery_labels[i] for i in rank_n_idx[i][:n]]
    correct_prediction = np.equal(label_list_id_probe_predict, list(np.array(probe_labels).repeat(n)))
    corr_n = 0
    for i in range(len(probe_labels)):
        corr_ = correct_prediction[i::n]
        if sum(corr_) > 0:
            corr_n += 1
    return rank1_acc, corr_n / len(probe_labels)


def _splits(seed, n_id, per_gallery, per_probe, noise, n_splits=10, dim=32):
    """Seeded identities (unit-free Gaussian centres) with noisy gallery and probe embeddings, one set per split."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        centres = rng.standard_normal((n_id, dim))
        gl, pl = np.repeat(np.arange(n_id), per_gallery), np.repeat(np.arange(n_id), per_probe)
        g = centres[gl] + noise * rng.standard_normal((len(gl), dim))
        p = centres[pl] + noise * rng.standard_normal((len(pl), dim))
        out.append((p, pl, g, gl))
    return out


@pytest.mark.parametrize(("per_gallery", "per_probe", "noise", "higher"), [(3, 3, 1.3, True), (1, 4, 0.8, False)],
                         ids=["three_per_identity_inflated", "one_per_identity_deflated"])
def test_strided_rank_10_on_seeded_random_splits(per_gallery, per_probe, noise, higher):
    splits = _splits(7 if higher else 8, 60, per_gallery, per_probe, noise)
    r = evaluate_identification(splits, ks=(1, 10), normalize=False)
    for s, (p, pl, g, gl) in enumerate(splits):
        rank1, rank10 = _original_rank_n(p, pl, g, gl, 10)
        assert r.strided_per_split[s, 0] == rank1 == r.per_split[s, 0]
        assert r.strided_per_split[s, 1] == rank10
    gap = r.strided_mean[10] - r.mean[10]
    if higher:  # several gallery items per identity: the stride finds a right column almost always
        assert (r.mean[10], r.strided_mean[10]) == pytest.approx((0.92, 1.0), abs=1e-9) and gap > 0.05
    else:  # one per identity: columns past the first are rarely right, the stride misses true hits
        assert (r.mean[10], r.strided_mean[10]) == pytest.approx((0.998333333, 0.565), abs=1e-9) and gap < -0.3
    assert r.strided_mean[1] == r.mean[1] and r.strided_std[1] == r.std[1]


def test_strided_rank_matches_the_transcription_with_ties_and_absent_labels():
    rng = np.random.default_rng(3)
    for trial in range(5):
        g = rng.integers(-1, 2, size=(30, 3)).astype(float)  # many exact ties
        p = rng.integers(-1, 2, size=(17, 3)).astype(float)
        gl, pl = rng.integers(0, 8, 30), rng.integers(0, 10, 17)  # labels 8, 9 are in no gallery: misses
        r = evaluate_identification([(p, pl, g, gl)], ks=(1, 2, 5, 10, 30), normalize=False)
        for i, k in enumerate(r.ks):
            assert r.strided_per_split[0, i] == _original_rank_n(p, pl, g, gl, k)[1 if k > 1 else 0], (trial, k)


def test_probe_label_absent_from_the_gallery_is_counted_as_a_miss():
    probe, pl, gallery, gl = _three_probes()
    pl = np.array([1, 7, 2])  # 7 is in no gallery: counted (a miss at every rank), not an error
    r = evaluate_identification([(probe, pl, gallery, gl)], ks=(1, 4))
    assert r.per_split.tolist() == [[1 / 3, 2 / 3]]


def test_strided_values_are_optional_and_absent_from_old_results():
    probe, pl, gallery, gl = _three_probes()
    r = evaluate_identification([(probe, pl, gallery, gl)], ks=(1, 2), strided=False)
    assert r.strided_per_split is None and "rank_strided" not in r.to_dict()
    # as pipeline/training/evaluate.py builds it: the same keys as before this feature
    direct = IdentificationResult(ks=(1, 10), per_split=np.array([[0.5, 1.0]]), mean={1: 0.5, 10: 1.0},
                                  std={1: 0.0, 10: 0.0})
    assert list(direct.to_dict()) == ["ks", "splits", "rank"]
    assert list(evaluate_identification([(probe, pl, gallery, gl)]).to_dict()) == ["ks", "splits", "rank",
                                                                                   "rank_strided"]


def test_strided_input_errors():
    m = np.ones((3, 2), dtype=bool)
    with pytest.raises(EvaluationInputError, match="m >= k >= 1"):
        strided_rank_hits(m, 3)
    with pytest.raises(EvaluationInputError, match="m >= k >= 1"):
        strided_rank_hits(m, 0)
    assert np.isnan(strided_rank_accuracy(m, 3))
    probe, pl, gallery, gl = _three_probes()
    with pytest.raises(EvaluationInputError, match="candidates must be >= 1"):
        nearest_matches(probe, pl, gallery, gl, n=0)


# --- verification: VAL on the training folds ----------------------------------------------------------------------
def _val_case():
    # the hand case of tests/test_evaluation.py: fold 0 = pairs 0-5, fold 1 = pairs 6-11 (2 same, 4 different each)
    dist = np.array([0.05, 0.06, 0.1005, 0.2005, 0.3005, 0.4005, 0.15, 0.25, 0.19, 0.5, 1.0, 2.0])
    same = np.array([True, True, False, False, False, False, True, True, False, False, False, False])
    return dist, same


@pytest.mark.parametrize("mode", ["clean", "faithful"])
def test_val_train_folds_by_hand(mode):
    dist, same = _val_case()
    kw = dict(n_folds=2, shuffle=False, far_targets=[0.3, 0.2], mode=mode, batch_images=2)
    r = evaluate_distances(dist, same, train_fold_val=True, **kw)
    v = r.val_at_far["0.3"]
    # thresholds (see test_val_at_far_by_hand): fold 0 -> 0.5002 (chosen on fold 1), fold 1 -> 0.2002 (on fold 0)
    # fold 0's training folds = fold 1: same pairs 0.15, 0.25 both < 0.5002 -> 1
    # fold 1's training folds = fold 0: same pairs 0.05, 0.06 both < 0.2002 -> 1
    assert v.fold_val_train.tolist() == [1.0, 1.0]
    assert (v.val_train_folds, v.val_train_folds_std) == (1.0, 0.0)
    assert v.fold_val.tolist() == [1.0, 0.5]  # the test-fold VAL is unchanged
    low = r.val_at_far["0.2"]  # not measurable: per-fold values only, like val
    assert low.val_train_folds is None and low.val_train_folds_std is None and np.isfinite(low.fold_val_train).all()
    d = r.to_dict()["val_at_far"]["0.3"]
    assert d["val_train_folds"] == 1.0 and d["val_train_folds_std"] == 0.0 and d["fold_val_train"] == [1.0, 1.0]
    # a same pair of fold 1 at 0.6 is rejected at fold 0's threshold 0.5002 (its training folds' VAL drops to 1/2)
    dist[7] = 0.6
    again = evaluate_distances(dist, same, train_fold_val=True, **kw).val_at_far["0.3"]
    assert again.fold_val_train.tolist() == [0.5, 1.0] and again.val_train_folds == 0.75
    assert again.val_train_folds_std == 0.25


def test_train_fold_val_is_opt_in_and_changes_nothing_else():
    rng = np.random.default_rng(5)
    same = rng.random(400) < 0.5
    a = rng.standard_normal((400, 8))
    b = np.where(same[:, None], a + rng.standard_normal((400, 8)), rng.standard_normal((400, 8)))
    for mode in ("clean", "faithful"):
        plain = evaluate_verification(a, b, same, mode=mode, far_targets=(1e-2, 1e-1))
        extra = evaluate_verification(a, b, same, mode=mode, far_targets=(1e-2, 1e-1), train_fold_val=True)
        pd, ed = plain.to_dict(curves=True), extra.to_dict(curves=True)
        new = {"val_train_folds", "val_train_folds_std", "fold_val_train"}
        for key, v in ed["val_at_far"].items():
            assert set(v) - set(pd["val_at_far"][key]) == new
            assert {k: x for k, x in v.items() if k not in new} == pd["val_at_far"][key]
        ed["val_at_far"] = pd["val_at_far"]
        assert json.dumps(ed) == json.dumps(pd)
        assert all(v.fold_val_train is None and v.val_train_folds is None for v in plain.val_at_far.values())
        json.dumps(extra.to_dict(), allow_nan=False)


def test_val_train_folds_nan_where_training_folds_hold_no_same_pair():
    # 2 folds: fold 0 holds every same pair, so fold 1's training folds (fold 0) hold them, fold 0's hold none
    dist = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    same = np.array([True, True, False, False, False, False, False, False])
    v = evaluate_distances(dist, same, n_folds=2, shuffle=False, far_targets=[0.5], train_fold_val=True,
                           mode="clean").val_at_far["0.5"]
    assert np.isnan(v.fold_val_train[0]) and np.isfinite(v.fold_val_train[1])  # the original: 0 for fold 0
    assert v.val_train_folds == v.fold_val_train[1]


# --- the reference fixture (the caricature code's calculate_val) --------------------------------------------------
def make_dist_case(n_pairs, seed, layout, tie_fraction, tie_values, **_):
    """The fixture's input recipe (identical to make_cari_fixture.py quoted in tests/fixtures/evaluation/README.md):
    u (N,) float64 in [0, 2] and same (N,) bool; the squared distance of a pair is u ** 2."""
    rng = np.random.default_rng(seed)
    n = n_pairs
    if layout == "sorted":
        same = np.arange(n) < n // 2
    elif layout == "blocks":
        same = (np.arange(n) * 20 // n) % 2 == 0
    else:
        same = rng.random(n) < 0.5
    u = np.where(same, rng.normal(0.85, 0.25, n), rng.normal(1.35, 0.12, n))
    u = np.clip(u, 0.0, 2.0)
    ties = rng.choice(n, size=int(tie_fraction * n), replace=False)
    tie_u = np.where(same[ties], rng.choice(tie_values["same"], size=len(ties)),
                     rng.choice(tie_values["different"], size=len(ties)))
    u[ties] = tie_u
    return u, same


def _sha256(*arrays):
    h = hashlib.sha256()
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _fixture():
    return json.loads(FIXTURE.read_text())


def _reference_cases():
    fx = _fixture()
    return [{**c, "tie_values": fx["tie_values"], "far_targets": fx["far_targets"]} for c in fx["cases"]]


def _inputs(case):
    u, same = make_dist_case(**case)
    assert _sha256(u, same.astype(np.uint8)) == case["inputs_sha256"], "the recipe no longer reproduces the fixture"
    if "inputs" in case:
        assert u.tolist() == case["inputs"]["u"] and same.tolist() == case["inputs"]["same"]
    return np.square(u), same


def _fold_order(case):
    """The pair order the reference got: contiguous, or grouped by our shuffled folds (KFold(shuffle, seed 0))."""
    n = case["n_pairs_used"]
    if case["folds"] == "contiguous":
        return np.arange(n)
    fold = fold_ids(n, 10, shuffle=True, seed=_fixture()["shuffle_seed"])
    return np.concatenate([np.flatnonzero(fold == f) for f in range(10)])


@pytest.mark.parametrize("case", _reference_cases(), ids=lambda c: c["name"])
def test_faithful_val_train_folds_match_the_caricature_code(case):
    dist, same = _inputs(case)
    order = _fold_order(case)
    assert _sha256(order.astype(np.int64)) == case["fold_order_sha256"]  # the same folds as the reference
    assert _sha256(dist[: case["n_pairs_used"]][order]) == case["dist_sha256"]  # bit-identical distances
    shuffled = case["folds"] == "shuffled"
    r = evaluate_distances(dist, same, mode="faithful", shuffle=shuffled, seed=0, far_targets=case["far_targets"],
                           train_fold_val=True)
    assert r.n_pairs_used == case["n_pairs_used"] == used_pairs(case["n_pairs"], "faithful")
    for key, ref in case["val"].items():
        v = r.val_at_far[far_key(float(key))]
        np.testing.assert_allclose(v.fold_threshold, ref["fold_threshold"], rtol=1e-15, atol=0)
        np.testing.assert_array_equal(v.fold_val_train, ref["fold_val_train"])
        assert np.mean(v.fold_val_train) == pytest.approx(ref["val_mean"], abs=1e-15)
        assert np.std(v.fold_val_train) == pytest.approx(ref["val_std"], abs=1e-15)
        if v.measurable:
            assert v.val_train_folds == pytest.approx(ref["val_mean"], abs=1e-15)
            assert v.val_train_folds_std == pytest.approx(ref["val_std"], abs=1e-15)
        else:
            assert v.val_train_folds is None


def test_clean_mode_agrees_with_the_reference_where_the_rules_coincide():
    """Clean mode's threshold rule equals facenet's interpolation (up to rounding) when every pair is used and the
    target is reached below the last grid threshold; then its training-fold VAL is the reference's."""
    compared = 0
    for case in _reference_cases():
        if case["n_pairs_used"] != case["n_pairs"]:
            continue
        dist, same = _inputs(case)
        r = evaluate_distances(dist, same, mode="clean", shuffle=case["folds"] == "shuffled", seed=0,
                               far_targets=case["far_targets"], train_fold_val=True)
        for key, ref in case["val"].items():
            if float(key) >= 1.0:  # a different pair at distance 4: the reference's threshold is 0, clean's 3.999
                continue
            v = r.val_at_far[far_key(float(key))]
            np.testing.assert_allclose(v.fold_threshold, ref["fold_threshold"], rtol=0, atol=1e-12)
            np.testing.assert_array_equal(v.fold_val_train, ref["fold_val_train"])
            compared += 1
    assert compared >= 10


def test_reference_covers_single_class_folds_ties_and_measurability():
    cases = {c["name"]: c for c in _reference_cases()}
    fx = _fixture()
    assert fx["versions"]["scipy"] == "1.8.1"  # genuine interp1d with duplicated FAR values
    dist, same = _inputs(cases["sorted_997"])
    r = evaluate_distances(dist, same, mode="faithful", far_targets=[0.1], train_fold_val=True)
    assert r.single_class_folds == 9 and r.n_pairs_used == 950  # fold 5 holds the last same pairs
    assert np.isfinite(r.val_at_far["0.1"].fold_val_train).all()  # the training folds hold both classes
    values, counts = np.unique(dist, return_counts=True)
    assert counts.max() > 10 and {0.0, 1.0, 4.0} <= set(values)  # ties, grid hits, a pair at the grid's end
    assert all(v["val_mean"] == 0.0 for c in cases.values() for k, v in c["val"].items() if k == "1.0")
    blocks = evaluate_distances(*_inputs(cases["blocks_3000"]), mode="faithful", far_targets=[1e-3])
    assert blocks.val_at_far["0.001"].measurable  # 1 / 1350 < 1e-3
