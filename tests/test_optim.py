"""TF1 RMSProp, TF-style global-norm clipping and the optimiser factory.

The reference trajectory ``fixtures/optim/tf1_rmsprop_reference.json`` was produced by TensorFlow itself
(``tf.compat.v1.train.RMSPropOptimizer`` after ``tf.clip_by_global_norm``); see ``fixtures/optim/README.md``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.settings import OptimizerSettings
from pipeline.training.optim import OPTIMIZERS, TF1RMSProp, build_optimizer, clip_by_global_norm_

REF_PATH = Path(__file__).parent / "fixtures" / "optim" / "tf1_rmsprop_reference.json"
RTOL, ATOL = 1e-10, 1e-13


def _tf_f32(x: float) -> float:
    """A Python float rounded through float32, as TF does with ``decay``/``momentum``/``epsilon``."""
    return float(np.float32(x))


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(REF_PATH.read_text())


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _ref_loss(ref: dict, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The fixture's loss: 0.15 * sum((X @ W + b - Y)^2) + 0.5 * sum(sin(3 W)) + 0.5 * sum(b^2)."""
    x, y = _t(ref["data"]["X"]), _t(ref["data"]["Y"])
    return 0.15 * (x @ w + b - y).pow(2).sum() + 0.5 * torch.sin(3.0 * w).sum() + 0.5 * b.pow(2).sum()


def _close(actual: torch.Tensor, expected, what: str) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what)


def test_reference_fixture_is_meaningful(ref):
    assert ref["dtype"] == "float64" and ref["clip_norm"] == 5.0
    assert ref["loss"].startswith("0.15 * sum((X @ W + b - Y)^2)")
    assert ref["optimizer"] == {"class": "tf.compat.v1.train.RMSPropOptimizer", "decay": 0.9, "momentum": 0.9,
                                "epsilon": 1.0, "centered": False}
    clipped = [s["clipped"] for s in ref["steps"]]
    assert any(clipped) and not all(clipped)
    assert len({s["lr"] for s in ref["steps"]}) > 1
    assert {"command", "tensorflow", "numpy", "date"} <= set(ref["generated_by"])


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_tensorflow_tf1_rmsprop_with_global_norm_clipping(ref, foreach):
    w = torch.nn.Parameter(_t(ref["initial"]["params"][0]))
    b = torch.nn.Parameter(_t(ref["initial"]["params"][1]))
    # TF converts the Python-float decay/momentum/epsilon to float32 tensors and casts them to the variable dtype, so
    # with float64 variables the effective constants are float32(0.9) etc. (the lr placeholder is float64).
    opt = TF1RMSProp([w, b], lr=ref["steps"][0]["lr"], rho=_tf_f32(0.9), momentum=_tf_f32(0.9), eps=_tf_f32(1.0),
                     foreach=foreach)
    for i, step in enumerate(ref["steps"]):
        opt.zero_grad()
        loss = _ref_loss(ref, w, b)
        _close(loss, step["loss_before"], f"loss, step {i}")
        loss.backward()
        for p, g in zip((w, b), step["grads"], strict=True):
            _close(p.grad, g, f"gradient before clipping, step {i}")
        norm = clip_by_global_norm_([w, b], ref["clip_norm"])
        assert norm.ndim == 0
        _close(norm, step["global_norm"], f"global norm, step {i}")
        for p, g in zip((w, b), step["clipped_grads"], strict=True):
            _close(p.grad, g, f"clipped gradient, step {i}")
        for group in opt.param_groups:  # the lr changes mid-run, as a scheduler would write it
            group["lr"] = step["lr"]
        opt.step()
        for k, p in enumerate((w, b)):
            _close(p, step["params"][k], f"variable {k}, step {i}")
            _close(opt.state[p]["ms"], step["rms"][k], f"rms slot {k}, step {i}")
            _close(opt.state[p]["mom"], step["momentum"][k], f"momentum slot {k}, step {i}")


def _quadratic_problem(seed: int = 0) -> tuple[list[torch.nn.Parameter], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))]
    target = torch.randn(17, generator=gen, dtype=torch.float64)
    return params, target


def _train(params, target, opt, lrs) -> None:
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        flat = torch.cat([p.reshape(-1) for p in params])
        (2.0 * (flat - target).pow(2).sum() + torch.cos(flat).sum()).backward()
        clip_by_global_norm_(params, 5.0)
        opt.step()


def test_state_dict_round_trip_continues_identically():
    params, target = _quadratic_problem()
    opt = TF1RMSProp(params, lr=0.1)
    _train(params, target, opt, [0.1, 0.1, 0.05])
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    _train(params, target, opt, [0.05, 0.02, 0.02])

    resumed = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = TF1RMSProp(resumed, lr=123.0)
    opt2.load_state_dict(saved_state)
    assert opt2.param_groups[0]["lr"] == 0.05
    _train(resumed, target, opt2, [0.05, 0.02, 0.02])
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(opt.state[a]["ms"], opt2.state[b]["ms"])
        assert torch.equal(opt.state[a]["mom"], opt2.state[b]["mom"])


def test_lr_change_between_steps_is_honoured_and_matches_hand_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = TF1RMSProp([p], lr=0.1, rho=0.9, momentum=0.9, eps=1.0)
    g1, g2 = np.array([0.3, -1.5, 4.0]), np.array([-0.2, 0.7, 2.5])
    ms, mom, theta = np.ones(3), np.zeros(3), p.detach().numpy().copy()
    for g, lr in ((g1, 0.1), (g2, 0.01)):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.9 * mom + lr * g / np.sqrt(ms + 1.0)
        theta = theta - mom
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-14)
        np.testing.assert_allclose(opt.state[p]["ms"].numpy(), ms, rtol=1e-14)
        np.testing.assert_allclose(opt.state[p]["mom"].numpy(), mom, rtol=1e-14)


def test_is_not_torch_rmsprop():
    grad = torch.tensor([0.3, -1.5, 4.0], dtype=torch.float64)
    ours = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    theirs = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt_ours = TF1RMSProp([ours], lr=0.1, rho=0.9, momentum=0.9, eps=1.0)
    opt_theirs = torch.optim.RMSprop([theirs], lr=0.1, alpha=0.9, momentum=0.9, eps=1.0)
    for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
        p.grad = grad.clone()
        opt.step()
    expected = -0.1 * grad / torch.sqrt(1.0 + 0.1 * (grad**2 - 1.0) + 1.0)
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-14, atol=0)
    assert not torch.allclose(ours, theirs, rtol=1e-3, atol=0)


def test_weight_decay_is_added_to_the_gradient():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    opt_wd = TF1RMSProp([p], lr=0.1, weight_decay=0.5)
    opt = TF1RMSProp([q], lr=0.1)
    p.grad = torch.tensor([0.3, 0.4], dtype=torch.float64)
    q.grad = p.grad + 0.5 * q.detach()
    opt_wd.step()
    opt.step()
    assert torch.equal(p, q)


def test_params_without_grad_are_skipped_and_devices_dtypes_mixed():
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    c = torch.nn.Parameter(torch.ones(2))
    opt = TF1RMSProp([a, b, c], lr=0.1)
    a.grad = torch.ones(2)
    b.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    assert torch.equal(c, torch.ones(2)) and c not in opt.state
    assert not torch.equal(a, torch.ones(2)) and a.dtype == torch.float32
    torch.testing.assert_close(a.double(), b.detach(), rtol=1e-6, atol=0)


def test_clip_skips_none_grads_and_leaves_grads_below_threshold_unchanged():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))  # no gradient
    a.grad = torch.tensor([3.0, 4.0])
    before = a.grad.clone()
    norm = clip_by_global_norm_([a, b], 5.0)  # norm == max_norm: not clipped
    assert norm.ndim == 0 and float(norm) == 5.0
    assert torch.equal(a.grad, before) and b.grad is None
    norm = clip_by_global_norm_(iter([a, b]), 10.0)
    assert float(norm) == 5.0 and torch.equal(a.grad, before)


def test_clip_on_gradient_list_scales_to_max_norm():
    g1, g2 = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([[4.0, 12.0]], dtype=torch.float64)
    norm = clip_by_global_norm_([g1, None, g2], 6.5)
    assert float(norm) == pytest.approx(13.0, rel=1e-15)
    torch.testing.assert_close(g1, torch.tensor([1.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(g2, torch.tensor([[2.0, 6.0]], dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.vector_norm(torch.cat([g1, g2.reshape(-1)])),
                               torch.tensor(6.5, dtype=torch.float64))


def test_clip_edge_cases():
    assert float(clip_by_global_norm_([None], 1.0)) == 0.0
    g = torch.tensor([1.0, math.inf])
    assert math.isinf(float(clip_by_global_norm_([g], 1.0)))
    assert torch.isnan(g).all()  # TF: a non-finite global norm makes the gradients NaN
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm_([torch.ones(1)], 0.0)


def _settings(name: str, **kw) -> OptimizerSettings:
    values = {"momentum": 0.9, "rms_decay": 0.9, "rms_eps": 1.0, "weight_decay": 0.0, "clip_norm": 0.0, **kw}
    return OptimizerSettings(name=name, **values)


def test_build_optimizer_names():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(_settings("rmsprop_tf1"), p, 0.1)
    assert isinstance(opt, TF1RMSProp)
    assert opt.defaults["rho"] == 0.9 and opt.defaults["momentum"] == 0.9 and opt.defaults["eps"] == 1.0
    rms = build_optimizer(_settings("RMSProp", rms_decay=0.8, rms_eps=0.5), p, 0.1)
    assert type(rms) is torch.optim.RMSprop and rms.defaults["alpha"] == 0.8 and rms.defaults["eps"] == 0.5
    assert build_optimizer(_settings("adam"), p, 0.1).defaults["eps"] == 1e-8  # the RMSProp eps=1.0 is not reused
    assert build_optimizer(_settings("adam", rms_eps=1e-6), p, 0.1).defaults["eps"] == 1e-6
    sgd = build_optimizer(_settings("sgd", momentum=0.5, weight_decay=0.01), p, 0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 0.01


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError) as err:
        build_optimizer(_settings("adagrad"), [torch.nn.Parameter(torch.zeros(1))], 0.1)
    msg = str(err.value)
    assert "\n" not in msg and "'adagrad'" in msg
    assert all(name in msg for name in OPTIMIZERS)
