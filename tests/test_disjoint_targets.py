"""Disjoint-dataset targets: the soft-target loss (:mod:`pipeline.losses.soft_target`), the distilled targets
(:mod:`pipeline.disjoint.distill`) and the pseudo-label selection rules (:mod:`pipeline.disjoint.selection`), on
small tensors with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.disjoint.distill import distill_targets
from pipeline.disjoint.selection import quantile_threshold, select_targets
from pipeline.losses.soft_target import onehot_targets, soft_target_ce

LN2, LN3 = math.log(2.0), math.log(3.0)


# --- soft_target_ce -------------------------------------------------------------------------------------------------


def _three_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0: p = [1/2, 1/2], q = [0.5, 0] -> CE 0.5 ln 2; row 1: no target (its logits must not matter);
    row 2: p = [3/4, 1/4], q = [0, 0.25] -> CE 0.25 ln 4 = 0.5 ln 2. Sum ln 2, 2 rows with a target, mass 0.75."""
    logits = torch.tensor([[0.0, 0.0], [7.0, -3.0], [LN3, 0.0]], requires_grad=True)
    targets = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 0.25]])
    return logits, targets


def test_rows_normalisation_divides_by_rows_with_a_target():
    logits, targets = _three_rows()
    loss, present = soft_target_ce(logits, targets)
    assert present.dtype == torch.bool and bool(present)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(LN2 / 2, rel=1e-6)


def test_weights_normalisation_divides_by_target_mass():
    logits, targets = _three_rows()
    loss, present = soft_target_ce(logits, targets, normalise="weights")
    assert bool(present)
    assert loss.item() == pytest.approx(LN2 / 0.75, rel=1e-6)


def test_row_without_target_gets_no_gradient():
    logits, targets = _three_rows()
    soft_target_ce(logits, targets)[0].backward()
    assert torch.equal(logits.grad[1], torch.zeros(2))
    assert logits.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0


@pytest.mark.parametrize("normalise", ["rows", "weights"])
def test_no_target_gives_zero_loss_not_present_and_zero_gradient(normalise):
    logits = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.0]], requires_grad=True)
    loss, present = soft_target_ce(logits, torch.zeros(2, 3), normalise=normalise)
    assert loss.item() == 0.0 and not bool(present)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad, torch.zeros(2, 3))


def test_empty_batch_gives_zero_loss_not_present():
    loss, present = soft_target_ce(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4))
    assert loss.item() == 0.0 and not bool(present)


def test_onehot_targets_match_torch_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    labels = torch.tensor([3, 0, -1, 2, 2, -1])
    loss, present = soft_target_ce(logits, onehot_targets(labels, 4))
    assert bool(present)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, ignore_index=-1))


def test_weighted_onehot_is_weighted_cross_entropy_in_both_normalisations():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 2, -1, 1])
    w = torch.tensor([0.5, 1.0, 0.7, 0.25])
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    keep = labels >= 0
    rows, _ = soft_target_ce(logits, onehot_targets(labels, 3, w))
    weights, _ = soft_target_ce(logits, onehot_targets(labels, 3, w), normalise="weights")
    torch.testing.assert_close(rows, (w * ce)[keep].sum() / 3)
    torch.testing.assert_close(weights, (w * ce)[keep].sum() / w[keep].sum())


def test_masked_logit_with_zero_target_is_finite_and_bf16_logits_give_float32():
    logits = torch.tensor([[0.0, float("-inf"), 0.0]], requires_grad=True)
    loss, _ = soft_target_ce(logits, torch.tensor([[1.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(LN2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    bf, _ = soft_target_ce(torch.zeros(2, 2, dtype=torch.bfloat16), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert bf.dtype == torch.float32 and bf.item() == pytest.approx(LN2, rel=1e-6)


def test_onehot_targets_rows_and_weights():
    out = onehot_targets(torch.tensor([2, -1, 0]), 3, torch.tensor([0.5, 0.9, 1.0]))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="normalise"):
        soft_target_ce(torch.zeros(1, 2), torch.zeros(1, 2), normalise="mean")
    with pytest.raises(ValueError, match="targets"):
        soft_target_ce(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels"):
        onehot_targets(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="labels"):
        onehot_targets(torch.tensor([-2]), 3)
    with pytest.raises(ValueError, match="weights"):
        onehot_targets(torch.tensor([0, 1]), 3, torch.ones(3))


# --- distill_targets ------------------------------------------------------------------------------------------------

SWAPPED = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # exp: [[1, 3], [3, 1]]


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.log()).sum())


def test_row_softmax_rows_sum_to_one_and_temperature_flattens():
    t1 = distill_targets(SWAPPED, 1.0)
    torch.testing.assert_close(t1, torch.tensor([[0.25, 0.75], [0.75, 0.25]]))
    t2 = distill_targets(SWAPPED, 2.0)
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(t2, torch.tensor([[1 / (1 + s3), s3 / (1 + s3)], [s3 / (1 + s3), 1 / (1 + s3)]]))
    torch.testing.assert_close(t2.sum(dim=1), torch.ones(2))
    assert _entropy(t2[0]) > _entropy(t1[0])


def test_matrix_softmax_normalises_the_whole_matrix():
    t1 = distill_targets(SWAPPED, 1.0, softmax="matrix")
    torch.testing.assert_close(t1, torch.tensor([[1 / 8, 3 / 8], [3 / 8, 1 / 8]]))
    torch.testing.assert_close(t1.sum(dim=1), torch.full((2,), 0.5))  # 1/N
    t2 = distill_targets(SWAPPED, 2.0, softmax="matrix")
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(t2, torch.tensor([[1.0, s3], [s3, 1.0]]) / (2 + 2 * s3))
    assert t2.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert _entropy(t2) > _entropy(t1)


def test_matrix_softmax_matches_the_numpy_formula_and_keeps_row_shapes():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(5, 4, generator=gen) * 3
    x = z.double().numpy() / 2.0
    ref = np.exp(x) / np.sum(np.exp(x))  # the original's softmax, no axis
    out = distill_targets(z, 2.0, softmax="matrix")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5)
    assert out.sum().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(out / out.sum(dim=1, keepdim=True), distill_targets(z, 2.0))
    unequal = distill_targets(torch.tensor([[0.0, 0.0], [LN3, LN3]]), 1.0, softmax="matrix")
    torch.testing.assert_close(unequal.sum(dim=1), torch.tensor([0.25, 0.75]))  # a row's mass is its share


def test_distill_is_float32_stable_and_handles_empty():
    big = distill_targets(torch.tensor([[1000.0, 0.0]], dtype=torch.bfloat16), 1.0, softmax="matrix")
    assert big.dtype == torch.float32 and torch.equal(big, torch.tensor([[1.0, 0.0]]))
    assert distill_targets(torch.zeros(0, 3), 2.0, softmax="matrix").shape == (0, 3)
    assert distill_targets(torch.zeros(0, 3), 2.0).shape == (0, 3)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distill_targets(SWAPPED, temperature)


def test_bad_softmax_raises():
    with pytest.raises(ValueError, match="softmax"):
        distill_targets(SWAPPED, 1.0, softmax="column")


# --- select_targets -------------------------------------------------------------------------------------------------

PSEUDO = torch.tensor([1, 0, 2, 1, 0])
W = torch.tensor([0.3, 0.9, 0.5, 0.1, 1.0])  # sorted: 0.1, 0.3, 0.5, 0.9, 1.0


def test_hard_q0_drops_exactly_the_minimum():
    sel = select_targets(PSEUDO, W, None, rule="hard", quantile=0.0, n_classes=3)
    assert sel.selected.tolist() == [True, True, True, False, True]
    expected = torch.tensor([[0, 0.3, 0], [0.9, 0, 0], [0, 0, 0.5], [0, 0, 0], [1.0, 0, 0]])
    torch.testing.assert_close(sel.targets, expected)


def test_hard_threshold_is_the_sorted_element_at_int_q_n_strictly():
    # q = 0.5: index int(2.5) = 2 -> threshold 0.5, kept only if strictly above
    sel = select_targets(PSEUDO, W, torch.zeros(5, 3), rule="hard", quantile=0.5)
    assert sel.selected.tolist() == [False, True, False, False, True]
    torch.testing.assert_close(sel.targets[1], torch.tensor([0.9, 0.0, 0.0]))
    assert torch.equal(sel.targets[[0, 2, 3]], torch.zeros(3, 3))
    # q = 0.9: index int(4.5) = 4 -> the maximum: nothing is strictly above it
    assert not select_targets(PSEUDO, W, None, rule="hard", quantile=0.9, n_classes=3).selected.any()
    # int(0.57 * 100) = 56 in double precision (not 57): 43 weights above w[56]
    w = torch.arange(100, dtype=torch.float32) / 100
    assert quantile_threshold(w, 0.57).item() == pytest.approx(0.56)
    sel = select_targets(torch.zeros(100, dtype=torch.long), w, None, rule="hard", quantile=0.57, n_classes=2)
    assert int(sel.selected.sum()) == 43


def test_hard_all_equal_weights_select_nothing():
    sel = select_targets(PSEUDO, torch.full((5,), 0.7), None, rule="hard", quantile=0.0, n_classes=3)
    assert not sel.selected.any() and torch.equal(sel.targets, torch.zeros(5, 3))
    loss, present = soft_target_ce(torch.zeros(5, 3), sel.targets)
    assert loss.item() == 0.0 and not bool(present)


@pytest.mark.parametrize("quantile", [1.0, 1.5, -0.1])
def test_quantile_outside_unit_interval_raises(quantile):
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\)"):
        select_targets(PSEUDO, W, None, rule="hard", quantile=quantile, n_classes=3)


def test_soft_interpolates_every_row():
    d = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    sel = select_targets(torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.25, 0.0]), d, rule="soft", quantile=0.5)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.45, 0.25 + 0.15, 0.15], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(sel.targets, expected)
    assert sel.selected.all()


def test_pure_is_half_onehot_half_distilled_ignoring_weights():
    d = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    sel = select_targets(torch.tensor([2, 0]), torch.tensor([0.0, 0.9]), d, rule="pure")
    torch.testing.assert_close(sel.targets, torch.tensor([[0.1, 0.15, 0.75], [0.8, 0.1, 0.1]]))
    assert sel.selected.all()


@pytest.mark.parametrize("rule", ["hard", "soft", "pure"])
def test_empty_source_gives_empty_targets(rule):
    empty = torch.zeros(0, dtype=torch.long)
    sel = select_targets(empty, torch.zeros(0), torch.zeros(0, 4), rule=rule, quantile=0.3)
    assert sel.targets.shape == (0, 4) and sel.selected.shape == (0,) and sel.selected.dtype == torch.bool


def test_selection_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="rule"):
        select_targets(PSEUDO, W, torch.zeros(5, 3), rule="interpolate")
    for rule in ("soft", "pure"):
        with pytest.raises(ValueError, match="distilled"):
            select_targets(PSEUDO, W, None, rule=rule)
    with pytest.raises(ValueError, match="n_classes"):
        select_targets(PSEUDO, W, None, rule="hard")
    with pytest.raises(ValueError, match="weights"):
        select_targets(PSEUDO, W[:4], None, rule="hard", n_classes=3)
    with pytest.raises(ValueError, match="distilled"):
        select_targets(PSEUDO, W, torch.zeros(4, 3), rule="soft")
