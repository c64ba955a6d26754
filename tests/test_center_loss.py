"""Center loss as implemented in the original code (docs/method.md §2.2), and in facenet's form (pretraining's
``center_loss.form: facenet``) against facenet's own ``center_loss`` run by TensorFlow
(``fixtures/center/facenet_center_reference.json``; see ``fixtures/center/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.losses.center import CenterLoss

F64 = torch.float64
FACENET_REF = json.loads((Path(__file__).parent / "fixtures" / "center" / "facenet_center_reference.json").read_text())


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """2 classes (0 and 2, class 1 absent), 3 samples, D = 2."""
    emb = np.array([[1.0, 2.0], [3.0, -2.0], [0.5, 0.25]])
    labels = np.array([0, 0, 2])
    return emb, labels


def _module(alpha: float = 0.5, k: int = 3, d: int = 2) -> CenterLoss:
    return CenterLoss(k, d, alpha, dtype=F64)


def test_centers_are_a_zero_buffer_not_a_parameter():
    cl = _module()
    assert cl.centers.shape == (3, 2) and torch.equal(cl.centers, torch.zeros(3, 2, dtype=F64))
    assert list(cl.parameters()) == [] and not cl.centers.requires_grad
    assert "centers" in cl.state_dict()


def test_loss_uses_pre_update_centers_then_update_moves_halfway_to_batch_means():
    emb, labels = _batch()
    cl = _module(alpha=0.5)
    start = np.array([[0.2, -0.4], [7.0, 8.0], [-1.0, 1.0]])
    cl.centers.copy_(torch.tensor(start))
    e, y = torch.tensor(emb), torch.tensor(labels)

    loss = cl(e, y)
    np.testing.assert_allclose(loss.numpy(), 0.5 * ((emb - start[labels]) ** 2).sum(axis=1), rtol=1e-15)
    cl.update(e, y)
    assert torch.equal(loss, cl(e, y)) is False  # the centers moved, so the same batch now gives another loss

    expected = start.copy()
    for j in np.unique(labels):
        mean_j = emb[labels == j].mean(axis=0)
        expected[j] = start[j] - (1 - 0.5) * (start[j] - mean_j)
        np.testing.assert_allclose(expected[j], (start[j] + mean_j) / 2, rtol=1e-15)  # halfway
    np.testing.assert_allclose(cl.centers.numpy(), expected, rtol=1e-15)
    np.testing.assert_array_equal(cl.centers[1].numpy(), start[1])  # class 1 absent from the batch: unchanged


def test_step_size_is_one_minus_alpha():
    emb, labels = _batch()
    cl = _module(alpha=0.9)
    cl.update(torch.tensor(emb), torch.tensor(labels))
    np.testing.assert_allclose(cl.centers[0].numpy(), 0.1 * emb[labels == 0].mean(axis=0), rtol=1e-15)
    assert torch.equal(cl.centers[1], torch.zeros(2, dtype=F64))


def test_gradient_flows_into_embeddings_only():
    emb, labels = _batch()
    cl = _module()
    cl.centers.copy_(torch.tensor([[0.2, -0.4], [7.0, 8.0], [-1.0, 1.0]]))
    e = torch.tensor(emb, requires_grad=True)
    cl(e, torch.tensor(labels)).sum().backward()
    np.testing.assert_allclose(e.grad.numpy(), emb - cl.centers.numpy()[labels], rtol=1e-15)
    assert not cl.centers.requires_grad and cl.centers.grad is None


def test_batch_statistics_and_apply_update_equal_update():
    emb, labels = _batch()
    e, y = torch.tensor(emb), torch.tensor(labels)
    a, b = _module(), _module()
    a.update(e, y)
    sums, counts = b.batch_statistics(e, y)
    np.testing.assert_allclose(sums.numpy(), [emb[labels == j].sum(axis=0) for j in range(3)], rtol=1e-15)
    np.testing.assert_array_equal(counts.numpy(), [2, 0, 1])
    b.apply_update(sums, counts)
    assert torch.equal(a.centers, b.centers)


def test_batch_statistics_are_detached():
    emb, labels = _batch()
    e = torch.tensor(emb, requires_grad=True)
    sums, counts = _module().batch_statistics(e, torch.tensor(labels))
    assert not sums.requires_grad and not counts.requires_grad


def test_summed_statistics_of_two_half_batches_equal_one_full_batch_update():
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(12, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 3, 3, 1, 0, 0, 4, 3, 1, 0, 3, 4])
    full, dist = CenterLoss(6, 4, 0.5, dtype=F64), CenterLoss(6, 4, 0.5, dtype=F64)
    start = torch.randn(6, 4, generator=gen, dtype=F64)
    full.centers.copy_(start)
    dist.centers.copy_(start)
    full.update(emb, labels)
    s1, c1 = dist.batch_statistics(emb[:6], labels[:6])  # "rank 0"
    s2, c2 = dist.batch_statistics(emb[6:], labels[6:])  # "rank 1"
    dist.apply_update(s1 + s2, c1 + c2)  # what all_reduce(SUM) would give every rank
    torch.testing.assert_close(dist.centers, full.centers, rtol=1e-14, atol=1e-15)
    assert torch.equal(dist.centers[2], start[2]) and torch.equal(dist.centers[5], start[5])


def test_float32_embeddings_with_float32_centers():
    cl = CenterLoss(4, 3)
    e = torch.ones(2, 3, requires_grad=True)
    loss = cl(e, torch.tensor([1, 3]))
    assert loss.dtype == torch.float32 and torch.equal(loss, torch.full((2,), 1.5))
    cl.update(e, torch.tensor([1, 3]))
    assert torch.equal(cl.centers[1], torch.full((3,), 0.5)) and torch.equal(cl.centers[0], torch.zeros(3))


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_out_of_range_labels_raise(bad):
    cl = _module(k=3)
    e = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"label -?\d+ out of range \[0, 3\)"):
        cl(e, torch.tensor(bad))
    with pytest.raises(ValueError, match="out of range"):
        cl.update(e, torch.tensor(bad))


def test_shape_and_dtype_errors():
    cl = _module(k=3, d=2)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        cl(torch.zeros(2, 5, dtype=F64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        cl(torch.zeros(2, 2, dtype=F64), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        cl(torch.zeros(2, 2, dtype=F64), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(3, 2, alpha=1.5)


# --- the facenet form ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol", "atol"), [(torch.float32, 1e-6, 1e-6), (F64, 1e-6, 1e-6)])
def test_facenet_form_reproduces_facenets_center_loss_run_by_tensorflow(dtype, rtol, atol):
    """Three steps with repeated labels (class 0 three times in step 0, absent from step 1): the loss (mean over
    B x D, pre-update centers), its gradient w.r.t. the features and the centers after each step equal TF's."""
    p = FACENET_REF["problem"]
    cl = CenterLoss(p["classes"], p["dim"], p["alfa"], form="facenet", dtype=dtype)
    for k, step in enumerate(FACENET_REF["steps"]):
        f = torch.tensor(step["features"], dtype=torch.float32).to(dtype).requires_grad_()
        y = torch.tensor(step["labels"])
        loss = cl(f, y).mean()
        loss.backward()
        cl.update(f, y)
        np.testing.assert_allclose(loss.item(), step["loss"], rtol=rtol, err_msg=f"step {k}")
        np.testing.assert_allclose(f.grad.numpy(), step["grad_features"], rtol=rtol, atol=atol, err_msg=f"step {k}")
        np.testing.assert_allclose(cl.centers.numpy(), step["centers_after"], rtol=rtol, atol=atol,
                                   err_msg=f"step {k}")
    assert cl.centers.dtype == dtype


def test_facenet_form_sums_the_per_sample_updates_of_a_repeated_class():
    """scatter_sub with a repeated label applies every sample's update: n_j (1 - alpha) (C_j - mean), not the mean
    move of the metrics_loss form; an absent class does not move; the loss is the mean of the squares."""
    emb, labels = _batch()
    start = np.array([[0.2, -0.4], [7.0, 8.0], [-1.0, 1.0]])
    cl = CenterLoss(3, 2, 0.75, form="facenet", dtype=F64)
    cl.centers.copy_(torch.tensor(start))
    e, y = torch.tensor(emb), torch.tensor(labels)
    np.testing.assert_allclose(cl(e, y).mean().item(), ((emb - start[labels]) ** 2).mean(), rtol=1e-15)
    cl.update(e, y)
    expected = start.copy()
    for i, j in enumerate(labels):
        expected[j] -= 0.25 * (start[j] - emb[i])
    np.testing.assert_allclose(cl.centers.numpy(), expected, rtol=1e-15)
    np.testing.assert_array_equal(cl.centers[1].numpy(), start[1])


def test_facenet_form_split_over_two_ranks_equals_one_full_batch_update():
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(12, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 3, 3, 1, 0, 0, 4, 3, 1, 0, 3, 4])
    full, dist = (CenterLoss(6, 4, 0.9, form="facenet", dtype=F64) for _ in range(2))
    start = torch.randn(6, 4, generator=gen, dtype=F64)
    full.centers.copy_(start)
    dist.centers.copy_(start)
    full.update(emb, labels)
    s1, c1 = dist.batch_statistics(emb[:6], labels[:6])
    s2, c2 = dist.batch_statistics(emb[6:], labels[6:])
    dist.apply_update(s1 + s2, c1 + c2)
    torch.testing.assert_close(dist.centers, full.centers, rtol=1e-14, atol=1e-15)
    assert torch.equal(dist.centers[2], start[2]) and torch.equal(dist.centers[5], start[5])


def test_the_form_says_which_features_it_takes_and_an_unknown_form_is_refused():
    assert CenterLoss(3, 2).form == "metrics_loss" and CenterLoss(3, 2).normalized_input
    assert not CenterLoss(3, 2, form="facenet").normalized_input
    assert "form=facenet" in repr(CenterLoss(3, 2, form="facenet"))
    with pytest.raises(ValueError, match="center loss form must be one of metrics_loss, facenet, got 'wen'"):
        CenterLoss(3, 2, form="wen")
