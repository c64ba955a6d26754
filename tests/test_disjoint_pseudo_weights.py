"""pipeline.disjoint.pseudo_weights: SA-MTL's confidence, density and distribution factors of the pseudo-label weights
and their combination, on hand-computed cases; the EMD closed form against the transport LP (scipy ``linprog``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import linprog

from pipeline.disjoint import pseudo_weights as pw
from pipeline.disjoint.pseudo_weights import combine, confidence, density, distribution, emd_point_to_mixture

# 5 points on a line (x, 0) with x = 0, 1, 2, 4, 8. Their 10 pair distances:
#   0-1: 1  0-2: 2  0-4: 4  0-8: 8  1-2: 1  1-4: 3  1-8: 7  2-4: 2  2-8: 6  4-8: 4
# sorted: 1 1 2 2 3 4 4 6 7 8; the sorted 5 x 5 matrix is 5 zeros, then each of those twice.
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [8.0, 0.0]])


def _original_density(x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """The original's rule written out on the full matrix (min-max with 0/0 read as 1, as specified)."""
    out = np.empty(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        d = np.linalg.norm(x[idx, None] - x[None, idx], axis=-1)
        cut = np.sort(d.ravel())[int(d.size * t)]
        rho = (d < cut).sum(axis=1) - 1.0
        span = rho.max() - rho.min()
        out[idx] = 1.0 if span == 0 else (rho - rho.min()) / span
    return out


def test_density_line_t06_by_hand():
    # t = 0.6: index int(25 * 0.6) = 15 of the sorted matrix = index (15 - 5) // 2 = 5 of the sorted pairs -> cutoff 4.
    # strictly closer than 4: x=0: {1, 2} -> 2; x=1: {0, 2, 4} -> 3; x=2: {1, 0, 4} -> 3; x=4: {1, 2} -> 2 (0 and 8
    # lie exactly at 4 and do not count); x=8: none -> 0. Min-max over [2, 3, 3, 2, 0]:
    np.testing.assert_allclose(density(LINE, np.zeros(5, dtype=int), 0.6), [2 / 3, 1, 1, 2 / 3, 0])


def test_density_line_t04_by_hand():
    # t = 0.4: index 10 -> pairs index 2 -> cutoff 2. Closer than 2: x=0: {1}; x=1: {0, 2}; x=2: {1}; x=4, x=8: none.
    np.testing.assert_allclose(density(LINE, np.zeros(5, dtype=int), 0.4), [0.5, 1, 0.5, 0, 0])


def test_density_equal_counts_and_zero_cutoff_give_one():
    # t = 0.1: index int(2.5) = 2 < 5 is a diagonal zero -> nothing is closer than 0 -> every count equal -> 1.
    np.testing.assert_array_equal(density(LINE, np.zeros(5, dtype=int), 0.1), np.ones(5))
    # t = 0.3: index 7 -> pairs index 1 -> cutoff 1; no distance is below 1 -> all counts 0 -> 1.
    np.testing.assert_array_equal(density(LINE, np.zeros(5, dtype=int), 0.3), np.ones(5))


def test_density_one_member_class_is_one_and_classes_do_not_interact():
    # class 7: 3 points (0.5, 0), (100, 0), (100.5, 0): pairs 99.5, 100, 0.5; t = 0.6: index int(5.4) = 5 -> pairs
    # index (5 - 3) // 2 = 1 -> cutoff 99.5; closer: (0.5, 0): none; the other two: each other -> [0, 1, 1].
    # (0.5, 0) lies among the line's points, which must not change the line's weights. Class 3: one member -> 1.
    other = np.array([[0.5, 0.0], [100.0, 0.0], [100.5, 0.0]])
    x = np.concatenate([other[:1], LINE, other[1:], [[1.0, 0.0]]])
    y = np.array([7, 0, 0, 0, 0, 0, 7, 7, 3])
    got = density(x, y, 0.6)
    np.testing.assert_allclose(got[1:6], [2 / 3, 1, 1, 2 / 3, 0])
    np.testing.assert_allclose(got[[0, 6, 7]], [0, 1, 1])
    assert got[8] == 1.0


def test_density_matches_the_written_out_rule_and_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = int(rng.integers(1, 40))
        x, y, t = rng.normal(size=(n, 3)), rng.integers(0, 3, n), float(rng.uniform(0.05, 0.95))
        np.testing.assert_allclose(density(x, y, t), _original_density(x, y, t), atol=1e-12)
    x, y = rng.normal(size=(60, 4)), rng.integers(0, 2, 60)
    whole = density(x, y, 0.6)
    monkeypatch.setattr(pw, "_BLOCK_ELEMENTS", 50)  # rows one at a time
    np.testing.assert_array_equal(density(x, y, 0.6), whole)


@pytest.mark.parametrize("t", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_density_rejects_t_outside_open_interval(t):
    with pytest.raises(ValueError, match="density_t"):
        density(LINE, np.zeros(5, dtype=int), t)


def test_density_rejects_bad_inputs():
    with pytest.raises(ValueError, match="pseudo"):
        density(LINE, np.zeros(4, dtype=int), 0.5)
    with pytest.raises(ValueError, match="pseudo"):
        density(LINE, np.zeros(5), 0.5)  # float labels
    with pytest.raises(ValueError, match="features"):
        density(LINE[:, 0], np.zeros(5, dtype=int), 0.5)


def test_confidence_by_hand():
    np.testing.assert_allclose(confidence(np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])),
                               [0.7, 0.5, 1.0])
    with pytest.raises(ValueError, match="probs"):
        confidence(np.array([0.2, 0.8]))


def test_emd_closed_form_by_hand():
    # distances from (0, 0): 5, 1, 10. Unit mass: 0.5 * 5 + 0.3 * 1 + 0.2 * 10 = 4.8.
    # Mass 0.4 fills the nearest atom (d = 1, 0.3) then 0.1 of the next (d = 5): (0.3 + 0.5) / 0.4 = 2.
    means, w = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]]), np.array([0.5, 0.3, 0.2])
    assert emd_point_to_mixture(np.zeros(2), means, w) == pytest.approx(4.8)
    assert emd_point_to_mixture(np.zeros(2), means, w, mass=0.4) == pytest.approx(2.0)
    assert emd_point_to_mixture(np.zeros(2), means, w, mass=3.0) == pytest.approx(4.8)  # flow min(3, 1) = 1


def test_emd_closed_form_is_the_transport_lp():
    rng = np.random.default_rng(11)
    for _ in range(5):
        point, means, w = rng.normal(size=4), rng.normal(size=(3, 4)) * 3, rng.dirichlet(np.ones(3))
        d = np.linalg.norm(means - point, axis=1)
        # the transport LP: a 1-atom source of mass 1, flows F[0, j] >= 0, row sum = 1, column sums = w_j
        lp = linprog(d, A_eq=np.vstack([np.ones(3), np.eye(3)]), b_eq=np.concatenate([[1.0], w]),
                     bounds=[(0, None)] * 3, method="highs")
        assert lp.status == 0
        assert emd_point_to_mixture(point, means, w) == pytest.approx(lp.fun, rel=1e-9)
        assert emd_point_to_mixture(point, means, w) == pytest.approx(float(w @ d), rel=1e-12)
        # the original's partial form: total flow = mass a < 1, f_j <= w_j, cost / a
        a = float(rng.uniform(0.05, 0.95))
        lp = linprog(d, A_eq=np.ones((1, 3)), b_eq=[a], bounds=[(0, wj) for wj in w], method="highs")
        assert emd_point_to_mixture(point, means, w, mass=a) == pytest.approx(lp.fun / a, rel=1e-9)


def test_emd_rejects_bad_inputs():
    means = np.zeros((2, 3))
    with pytest.raises(ValueError, match="weights"):
        emd_point_to_mixture(np.zeros(3), means, np.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="point"):
        emd_point_to_mixture(np.zeros(2), means, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="mass"):
        emd_point_to_mixture(np.zeros(3), means, np.array([0.5, 0.5]), mass=0.0)


def _two_groups(far: float) -> tuple[np.ndarray, np.ndarray]:
    """Labelled: 3 x (0, 0) and 3 x (10, 0). Pseudo: 3 x (0, 0) and 3 x (far, 0)."""
    lab = np.repeat([[0.0, 0.0], [10.0, 0.0]], 3, axis=0)
    pse = np.repeat([[0.0, 0.0], [far, 0.0]], 3, axis=0)
    return lab, pse


def test_distribution_near_and_far_by_hand():
    # k = 2; labelled mixture: (0, 0) and (10, 0), weights 1/2. Pseudo components (0, 0): EMD 0.5 * 0 + 0.5 * 10 = 5;
    # (50, 0): 0.5 * 50 + 0.5 * 40 = 45. Weights min(EMD) / EMD: 1 and 5 / 45.
    lab, pse = _two_groups(50.0)
    got = distribution(lab, np.zeros(6, dtype=int), pse, np.zeros(6, dtype=int), k=2, seed=0)
    np.testing.assert_allclose(got, [1, 1, 1, 1 / 9, 1 / 9, 1 / 9], rtol=1e-6)
    assert got.max() == 1.0


def test_distribution_zero_emd_gives_one_without_dividing_by_zero():
    # source_mass="component" (the original's): (0, 0) with mass 1/2 all goes to the labelled atom (0, 0) of weight 1/2
    # -> EMD 0 -> weight 1; the far component then gets the limit 0.
    lab, pse = _two_groups(50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = distribution(lab, np.zeros(6, dtype=int), pse, np.zeros(6, dtype=int), k=2, seed=0,
                           source_mass="component")
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[:3], 1.0)
    assert (got[3:] < 1e-9).all()


def test_distribution_seeded_and_far_cluster_weighs_less():
    rng = np.random.default_rng(5)
    lab = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + [6, 0, 0]])
    pse = np.concatenate([rng.normal(size=(60, 3)) + [1, 0, 0], rng.normal(size=(60, 3)) + [40, 40, 0]])
    args = (lab, np.zeros(120, dtype=int), pse, np.zeros(120, dtype=int))
    a, b = distribution(*args, k=2, seed=7), distribution(*args, k=2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.max() == 1.0 and (a > 0).all()
    assert len(np.unique(a[:60])) == 1 and len(np.unique(a[60:])) == 1  # one value per component
    assert a[0] == 1.0 and a[60] < 0.2


def test_distribution_rejects_k():
    lab, pse = _two_groups(50.0)
    args = (lab, np.zeros(6, dtype=int), pse[:4], np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"cluster_k \(5\) exceeds the 4 samples of the pseudo"):
        distribution(*args, k=5, seed=0)
    with pytest.raises(ValueError, match=r"cluster_k \(7\) exceeds the 6 samples of the labelled"):
        distribution(*args, k=7, seed=0)
    with pytest.raises(ValueError, match="cluster_k"):
        distribution(*args, k=0, seed=0)


FACTORS = {"confidence": np.array([0.5, 1.0, 0.2, 0.8]), "density": np.array([1.0, 0.5, 0.0, 1.0]),
           "distribution": np.array([0.25, 1.0, 1.0, 0.5])}


def test_combine_product_over_max():
    # all three: [0.125, 0.5, 0, 0.4] / 0.5
    np.testing.assert_allclose(combine(FACTORS, ["confidence", "density", "distribution"]), [0.25, 1, 0, 0.8])
    # confidence x distribution: [0.125, 1, 0.2, 0.4] / 1
    np.testing.assert_allclose(combine(FACTORS, ["distribution", "confidence"]), [0.125, 1, 0.2, 0.4])
    np.testing.assert_allclose(combine(FACTORS, ["density"]), [1, 0.5, 0, 1])
    np.testing.assert_array_equal(combine(FACTORS, []), np.ones(4))


def test_combine_zero_max_gives_zeros():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = combine({"density": np.zeros(3), "confidence": np.ones(3)}, ["density", "confidence"])
    np.testing.assert_array_equal(got, np.zeros(3))


def test_combine_rejects():
    with pytest.raises(ValueError, match="'purity'"):
        combine(FACTORS, ["confidence", "purity"])
    with pytest.raises(ValueError, match="twice"):
        combine(FACTORS, ["density", "density"])
    with pytest.raises(ValueError, match="'distribution'"):
        combine({"confidence": np.ones(2)}, ["distribution"])
    with pytest.raises(ValueError, match="length"):
        combine({"confidence": np.ones(2), "density": np.ones(3)}, ["confidence"])
    with pytest.raises(ValueError, match="non-negative"):
        combine({"confidence": np.array([0.5, -0.1])}, ["confidence"])
