"""Unit tests of the task-weighting strategies (:mod:`pipeline.weighting`): registry and options, the dynamic unit's
variants and their normalisation bounds (docs/method.md §3), gradient routing, the baselines and checkpoint state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pipeline.weighting import (
    WEIGHTINGS,
    DWAWeighting,
    DynamicWeighting,
    GradNormWeighting,
    NaiveDynamicWeighting,
    Weighting,
    build_weighting,
    weighting_names,
)

TASKS2 = ["identity", "expression"]
TASKS3 = ["verification", "visual", "caricature"]
C, H, W = 6, 2, 2
D = C * H * W
B = 8


class Problem:
    """Features ``[B, C, H, W]`` from a shared layer ``shared`` and ``T`` losses that depend on the features."""

    def __init__(self, n_tasks: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(B, 5, generator=g)
        self.shared = nn.Parameter(torch.randn(5, D, generator=g) * 0.5)
        self.heads = [torch.randn(D, generator=g) for _ in range(n_tasks)]
        self.scales = torch.linspace(0.5, 2.0, n_tasks)

    def features(self) -> torch.Tensor:
        return torch.tanh(self.x @ self.shared).reshape(B, C, H, W)

    def losses(self, features: torch.Tensor) -> torch.Tensor:
        z = features.flatten(1)
        return torch.stack([s * (z @ h).pow(2).mean() for s, h in zip(self.scales, self.heads, strict=True)])


def _build(name: str, tasks: list[str], **options) -> Weighting:
    return build_weighting(name, options, tasks, D)


# ---------------------------------------------------------------- registry, shapes, options


@pytest.mark.parametrize("tasks", [TASKS2, TASKS3], ids=["T2", "T3"])
def test_every_name_builds_and_gives_finite_weights(tasks: list[str]) -> None:
    names = weighting_names(tasks)
    assert {f"single_{t}" for t in tasks} <= set(names)
    assert set(names) - {f"single_{t}" for t in tasks} == set(WEIGHTINGS) - {"single_<task>"}
    for name in names:
        torch.manual_seed(0)
        strategy = _build(name, tasks)
        problem = Problem(len(tasks))
        feats = problem.features()
        ws = strategy.compute(problem.losses(feats), feats, shared=[problem.shared])
        assert ws.weights.shape == (len(tasks),), name
        assert torch.isfinite(ws.weights).all(), name
        assert ws.total.shape == () and torch.isfinite(ws.total), name
        if ws.aux is not None:
            assert ws.aux.shape == () and torch.isfinite(ws.aux), name
        assert all(v.shape == () and not v.requires_grad for v in ws.extra.values()), name
        has_own = bool(strategy.own_parameters())
        assert has_own == (ws.aux is not None), name


def test_fixed_weights() -> None:
    feats, losses = torch.zeros(B, C, H, W), torch.tensor([2.0, 3.0, 5.0])
    assert _build("single_visual", TASKS3).compute(losses, feats).weights.tolist() == [0.0, 1.0, 0.0]
    assert _build("equal", TASKS3).compute(losses, feats).total.item() == pytest.approx(10.0)
    static = _build("static", TASKS2).compute(losses[:2], feats)
    assert static.weights.tolist() == [0.5, 0.5] and static.total.item() == pytest.approx(2.5)
    assert _build("static", TASKS3).compute(losses, feats).weights.tolist() == pytest.approx([1 / 3] * 3)
    custom = _build("static", TASKS3, weights=[0.55, 0.30, 0.15]).compute(losses, feats)
    assert custom.total.item() == pytest.approx(0.55 * 2 + 0.3 * 3 + 0.15 * 5)


def test_dynamic_defaults_per_variant() -> None:
    fer = _build("dynamic", TASKS2)
    assert isinstance(fer, DynamicWeighting) and fer.variant == "fer" and fer.sigma == 0.01
    assert not fer.detach_weights
    assert fer.own_lr.at(1e-4) == pytest.approx(0.1)
    assert _build("dynamic", TASKS2, lr_weights=None).own_lr.at(1e-4) == pytest.approx(1e-4)
    assert _build("dynamic", TASKS3, variant="cavi").own_lr.at(1e-3) == pytest.approx(1e-3)
    assert _build("dynamic", TASKS3, variant="webcari").own_lr.at(1e-3) == pytest.approx(1e-2)
    assert _build("dynamic", TASKS3, variant="webcari", lr_weights_factor=3).own_lr.at(1e-3) == pytest.approx(3e-3)
    assert _build("dynamic", TASKS3, variant="cavi", lr_weights=0.2).own_lr.at(1e-3) == pytest.approx(0.2)
    assert _build("gradnorm", TASKS2).own_lr.at(1.0) == pytest.approx(0.025)
    fc = fer.own_parameters()
    assert [tuple(p.shape) for p in fc] == [(2, D), (2,)]
    # truncated normal(0.1) weights, zero bias
    assert float(fc[0].detach().abs().max()) <= 0.2 and float(fc[1].detach().abs().max()) == 0.0
    naive = _build("naive_dynamic", TASKS3)
    assert naive.own_parameters() == [] and len(naive.main_parameters()) == 2


def test_base_offsets_are_added() -> None:
    torch.manual_seed(0)
    a = _build("dynamic", TASKS3, variant="cavi")
    torch.manual_seed(0)
    b = _build("dynamic", TASKS3, variant="cavi", base=[0.1, 0.0, -0.05])
    feats = torch.randn(B, C, H, W)
    losses = torch.ones(3)
    diff = b.compute(losses, feats).weights - a.compute(losses, feats).weights
    assert diff.tolist() == pytest.approx([0.1, 0.0, -0.05], abs=1e-6)


@pytest.mark.parametrize(("name", "options", "fragment"), [
    ("dinamic", {}, "unknown weighting 'dinamic'; choose one of: single_identity, single_expression, static"),
    ("single_pose", {}, "unknown weighting 'single_pose'"),
    ("dynamic", {"variant": "cari"}, "option 'variant' is 'cari'; choose one of: fer, cavi, webcari"),
    ("dynamic", {"sigmaa": 0.1}, "unknown option 'sigmaa'; allowed options: variant, sigma, detach_weights"),
    ("dynamic", {"sigma": 0}, "option 'sigma' must be a number > 0"),
    ("dynamic", {"sigma": "0.01"}, "option 'sigma' must be a finite number > 0"),
    ("dynamic", {"sigma": float("nan")}, "option 'sigma' must be a finite number"),
    ("dynamic", {"detach_weights": "yes"}, "option 'detach_weights' must be true or false"),
    ("dynamic", {"detach_weights": 1}, "option 'detach_weights' must be true or false"),
    ("dynamic", {"lr_weights": -0.1}, "option 'lr_weights' must be a number > 0 or null"),
    ("dynamic", {"lr_weights_factor": 0}, "option 'lr_weights_factor' must be a number > 0"),
    ("dynamic", {"base": [0.1]}, "option 'base' must be a list of 2 finite numbers (one per task)"),
    ("naive_dynamic", {"variant": "fer"}, "unknown option 'variant'; allowed options: base"),
    ("static", {"weights": [0.5, 0.5, 0.0]}, "option 'weights' must be a list of 2 finite numbers >= 0"),
    ("static", {"weights": [0.5, -0.5]}, "option 'weights' must be a list of 2 finite numbers >= 0"),
    ("static", {"weights": [0, 0]}, "option 'weights' must not be all zero"),
    ("static", {"weights": "0.5,0.5"}, "option 'weights' must be a list"),
    ("equal", {"weights": [1, 1]}, "unknown option 'weights'; allowed options: none"),
    ("single_identity", {"weights": [1, 0]}, "unknown option 'weights'; allowed options: none"),
    ("uncertainty", {"init": 0.0}, "unknown option 'init'"),
    ("dwa", {"temperature": 0.0}, "option 'temperature' must be a number > 0"),
    ("dwa", {"temperature": True}, "option 'temperature' must be a finite number > 0"),
    ("gradnorm", {"alpha": -1}, "option 'alpha' must be a number >= 0"),
    ("gradnorm", {"lr_weights": None}, "option 'lr_weights' must be a finite number > 0"),
    ("gradnorm", {"alpha": 1.5, "lr": 0.1}, "unknown option 'lr'; allowed options: alpha, lr_weights, update"),
    ("dynamic", ["variant"], "options must be a mapping"),
])
def test_invalid_names_and_options(name: str, options, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        build_weighting(name, options, TASKS2, D)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_invalid_tasks_and_feature_dim() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        build_weighting("equal", {}, [], D)
    with pytest.raises(ValueError, match="unique"):
        build_weighting("equal", {}, ["a", "a"], D)
    with pytest.raises(ValueError, match="feature_dim"):
        build_weighting("dynamic", {}, TASKS2, 0)
    unit = _build("dynamic", TASKS2)
    with pytest.raises(ValueError, match=f"expects {D} flattened features"):
        unit.compute(torch.ones(2), torch.zeros(B, C + 1, H, W))


def test_options_none_means_defaults() -> None:
    assert build_weighting("dwa", None, TASKS2, D).temperature == 2.0


def test_weighting_options_lists_what_the_parser_reads() -> None:
    from pipeline.weighting.options import parse_weighting, weighting_options

    assert weighting_options("dynamic", TASKS2) == ["variant", "sigma", "detach_weights", "lr_weights",
                                                    "lr_weights_factor", "base"]
    assert weighting_options("naive_dynamic", TASKS2) == ["base"]
    assert weighting_options("gradnorm", TASKS3) == ["alpha", "lr_weights", "update"]
    assert weighting_options("single_caricature", TASKS3) == []
    assert weighting_options("equal", TASKS2) == []
    with pytest.raises(ValueError, match="unknown weighting 'single_caricature'"):
        weighting_options("single_caricature", TASKS2)
    for name in weighting_names(TASKS2):  # each listed option is accepted, each other one is not
        options = weighting_options(name, TASKS2)
        defaults = parse_weighting(name, None, TASKS2).arguments
        if options:
            assert parse_weighting(name, {k: defaults[k] for k in options}, TASKS2).arguments == defaults
        with pytest.raises(ValueError, match=f"allowed options: {', '.join(options) or 'none'}$"):
            parse_weighting(name, {"not_an_option": 1}, TASKS2)


# ---------------------------------------------------------------- dynamic unit: bounds


def _per_sample_extremes(name: str, options: dict, n_draws: int = 40) -> tuple[float, float]:
    """Min and max per-sample weight over random features and random (large) FC weights, T = 3."""
    torch.manual_seed(0)
    strategy = _build(name, TASKS3, **options)
    lo, hi = 1.0, 0.0
    with torch.no_grad():
        for i in range(n_draws):
            scale = 10.0 ** (i % 5 - 1)  # 0.1 … 1000: from near-uniform to saturated logits
            strategy.unit.logits_lossweights.weight.normal_(0.0, scale)
            strategy.unit.logits_lossweights.bias.normal_(0.0, scale)
            s = strategy.unit.per_sample(torch.randn(256, C, H, W) * 3)
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    return lo, hi


def _exact_bounds(scale: float, n_tasks: int = 3) -> tuple[float, float]:
    """Extremes of one softmax component over logits of norm ``scale``: the logit vector along ``±(e_1 − 1/T)``."""
    gap = scale * math.sqrt(n_tasks / (n_tasks - 1))  # logit difference between the extreme task and the others
    return (math.exp(-gap) / (math.exp(-gap) + n_tasks - 1), math.exp(gap) / (math.exp(gap) + n_tasks - 1))


@pytest.mark.parametrize(("name", "options", "scale", "spec_bounds"), [
    ("naive_dynamic", {}, 0.5, (0.21, 0.48)),
    ("dynamic", {"variant": "cavi"}, 1.0, (0.13, 0.63)),
    ("dynamic", {"variant": "webcari"}, 2.0, (0.04, 0.85)),
])
def test_normalised_variants_bound_the_weights(name: str, options: dict, scale: float,
                                               spec_bounds: tuple[float, float]) -> None:
    exact = _exact_bounds(scale)
    assert (round(exact[0], 2), round(exact[1], 2)) == spec_bounds  # docs/method.md §3 quotes them to two decimals
    lo, hi = _per_sample_extremes(name, options)
    assert exact[0] - 1e-6 <= lo and hi <= exact[1] + 1e-6
    assert lo < exact[0] + 0.02 and hi > exact[1] - 0.02  # the bounds are (nearly) reached


def test_fer_variant_is_unbounded() -> None:
    lo, hi = _per_sample_extremes("dynamic", {"variant": "fer"})
    assert lo < 1e-3 and hi > 0.999


def test_batch_weights_sum_to_one_plus_base() -> None:
    for name, options in [("dynamic", {}), ("dynamic", {"variant": "webcari"}), ("naive_dynamic", {})]:
        strategy = _build(name, TASKS3, **options, base=[0.2, 0.0, 0.1])
        w = strategy.compute(torch.ones(3), torch.randn(B, C, H, W)).weights
        assert float(w.detach().sum()) == pytest.approx(1.3, abs=1e-6)


# ---------------------------------------------------------------- gradient routing


@pytest.mark.parametrize("variant", ["fer", "cavi", "webcari"])
def test_total_gradient_flows_through_the_weights_unless_detached(variant: str) -> None:
    problem = Problem(3)
    feats = problem.features().detach().requires_grad_(True)
    torch.manual_seed(1)
    coded = _build("dynamic", TASKS3, variant=variant)
    detached = _build("dynamic", TASKS3, variant=variant, detach_weights=True)
    detached.load_state_dict(coded.state_dict())

    losses = problem.losses(feats)
    ws = coded.compute(losses, feats)
    (g_coded,) = torch.autograd.grad(ws.total, feats, retain_graph=True)
    ws_det = detached.compute(losses, feats)
    (g_det,) = torch.autograd.grad(ws_det.total, feats, retain_graph=True)
    assert torch.equal(ws.weights.detach(), ws_det.weights.detach())

    # detached: Σ_t w_t ∂L_t/∂features
    w = ws.weights.detach()
    expected_det = sum(w[t] * torch.autograd.grad(losses[t], feats, retain_graph=True)[0] for t in range(3))
    torch.testing.assert_close(g_det, expected_det)
    # coded: + Σ_t L_t ∂w_t/∂features
    (through_w,) = torch.autograd.grad((ws.weights * losses.detach()).sum(), feats, retain_graph=True)
    assert float(through_w.abs().max()) > 1e-6
    torch.testing.assert_close(g_coded, expected_det + through_w)
    assert not torch.allclose(g_coded, g_det)
    # the FC is not trained by the main loss of the paper's unit
    assert not any(p in {id(q) for q in coded.main_parameters()} for p in map(id, coded.own_parameters()))


@pytest.mark.parametrize("variant", ["fer", "cavi", "webcari"])
def test_aux_gradient_reaches_only_the_fc(variant: str) -> None:
    problem = Problem(3)
    feats = problem.features()
    strategy = _build("dynamic", TASKS3, variant=variant)
    losses = problem.losses(feats)
    ws = strategy.compute(losses, feats, shared=[problem.shared])
    own = strategy.own_parameters()
    grads = torch.autograd.grad(ws.aux, [feats, losses, problem.shared, *own], allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[2] is None
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads[3:])
    # the same value as Σ_t w_t / (L_t + σ)
    expected = (ws.weights.detach() / (losses.detach() + 0.01)).sum()
    torch.testing.assert_close(ws.aux.detach(), expected)


@pytest.mark.parametrize(("variant", "tasks"), [("fer", TASKS2), ("cavi", TASKS3), ("webcari", TASKS3)])
def test_minimising_aux_moves_weight_to_the_larger_loss(variant: str, tasks: list[str]) -> None:
    torch.manual_seed(3)
    strategy = _build("dynamic", tasks, variant=variant)
    feats = torch.randn(32, C, H, W)
    losses = torch.tensor([0.2, 1.5, 0.6][: len(tasks)])
    before = strategy.compute(losses, feats).weights.detach()
    ws = strategy.compute(losses, feats)
    grads = torch.autograd.grad(ws.aux, strategy.own_parameters())
    with torch.no_grad():
        for p, g in zip(strategy.own_parameters(), grads, strict=True):
            p.sub_(0.5 * g)
    after = strategy.compute(losses, feats).weights.detach()
    hardest, easiest = int(losses.argmax()), int(losses.argmin())
    assert after[hardest] > before[hardest]
    assert after[easiest] < before[easiest]


def test_naive_unit_trains_with_the_network_toward_the_easier_task() -> None:
    torch.manual_seed(3)
    strategy = _build("naive_dynamic", TASKS3)
    feats = torch.randn(32, C, H, W)
    losses = torch.tensor([0.2, 1.5, 0.6])
    ws = strategy.compute(losses, feats)
    assert ws.aux is None
    before = ws.weights.detach()
    grads = torch.autograd.grad(ws.total, strategy.main_parameters())
    with torch.no_grad():
        for p, g in zip(strategy.main_parameters(), grads, strict=True):
            p.sub_(0.5 * g)
    after = strategy.compute(losses, feats).weights.detach()
    assert after[0] > before[0] and after[1] < before[1]


# ---------------------------------------------------------------- baselines


def test_uncertainty_form() -> None:
    strategy = _build("uncertainty", TASKS2)
    with torch.no_grad():
        strategy.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = torch.tensor([2.0, 3.0])
    ws = strategy.compute(losses, torch.zeros(B, C, H, W))
    s = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(ws.weights.detach(), 0.5 * torch.exp(-s))
    assert ws.total.item() == pytest.approx(float((losses / (2 * s.exp()) + s / 2).sum()))
    assert ws.extra["log_var_identity"].item() == pytest.approx(0.5)
    assert strategy.main_parameters() == [strategy.log_vars]
    (g,) = torch.autograd.grad(ws.total, strategy.log_vars)
    torch.testing.assert_close(g, -losses / (2 * s.exp()) + 0.5)


def test_dwa_weights_and_resume() -> None:
    strategy = _build("dwa", TASKS3, temperature=2.0)
    feats = torch.zeros(B, C, H, W)
    losses = torch.ones(3)
    assert strategy.compute(losses, feats).weights.tolist() == [1.0, 1.0, 1.0]
    strategy.end_epoch(torch.tensor([1.0, 2.0, 3.0]))
    assert strategy.compute(losses, feats).weights.tolist() == [1.0, 1.0, 1.0]
    strategy.end_epoch(torch.tensor([0.5, 2.0, 3.3]))
    r = torch.tensor([0.5, 1.0, 1.1])
    expected = 3 * torch.softmax(r / 2.0, dim=0)
    torch.testing.assert_close(strategy.compute(losses, feats).weights, expected)

    state = json.loads(json.dumps(strategy.extra_state()))
    resumed = _build("dwa", TASKS3, temperature=2.0)
    resumed.load_extra_state(state)
    torch.testing.assert_close(resumed.compute(losses, feats).weights, expected)
    for s in (strategy, resumed):
        s.end_epoch(torch.tensor([0.4, 1.0, 3.0]))
    torch.testing.assert_close(resumed.compute(losses, feats).weights, strategy.compute(losses, feats).weights)
    assert not torch.allclose(resumed.compute(losses, feats).weights, expected)
    with pytest.raises(ValueError, match="3 tasks"):
        resumed.load_extra_state({"history": [[1.0, 2.0]]})


def test_gradnorm_step_and_renormalisation() -> None:
    problem = Problem(2)
    strategy = _build("gradnorm", TASKS2, alpha=1.5)
    assert isinstance(strategy, GradNormWeighting)
    feats = problem.features()
    losses = problem.losses(feats)
    ws = strategy.compute(losses, feats, shared=[problem.shared])
    # G_t = ‖∇_W (w_t L_t)‖ with w = 1
    norms = [torch.linalg.vector_norm(torch.autograd.grad(losses[t], problem.shared, retain_graph=True)[0])
             for t in range(2)]
    for t, name in enumerate(TASKS2):
        assert ws.extra[f"grad_norm_{name}"].item() == pytest.approx(float(norms[t]), rel=1e-5)
    torch.testing.assert_close(ws.total, losses.sum())
    # first step: r = 1, so aux = Σ |G_t − mean G|; the task with the larger gradient norm loses weight
    mean = (norms[0] + norms[1]) / 2
    assert ws.aux.item() == pytest.approx(float(abs(norms[0] - mean) + abs(norms[1] - mean)), rel=1e-5)
    (g,) = torch.autograd.grad(ws.aux, strategy.own_parameters())
    big = int(torch.stack(norms).argmax())
    assert g[big] > 0 > g[1 - big]
    # L(0) is the first step's losses, a state_dict buffer
    torch.testing.assert_close(strategy.initial_losses, losses.detach())
    assert strategy.has_initial.all()
    second = strategy.compute(losses * 2, feats, shared=[problem.shared])
    torch.testing.assert_close(strategy.initial_losses, losses.detach())
    assert torch.isfinite(second.aux)
    # renormalisation after the step: Σ w = T, non-negative
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([3.0, -0.5]))
    strategy.after_step()
    assert float(strategy.task_weights.detach().sum()) == pytest.approx(2.0)
    assert float(strategy.task_weights.detach().min()) > 0
    with torch.no_grad():
        strategy.task_weights.copy_(torch.tensor([0.6, 1.8]))
    strategy.after_step()
    torch.testing.assert_close(strategy.task_weights.detach(), torch.tensor([0.5, 1.5]))


def test_gradnorm_needs_shared_parameters() -> None:
    problem = Problem(2)
    feats = problem.features()
    strategy = _build("gradnorm", TASKS2)
    with pytest.raises(ValueError, match="shared layer"):
        strategy.compute(problem.losses(feats), feats, shared=[])
    with pytest.raises(ValueError, match="attached to the graph"):
        strategy.compute(torch.ones(2), feats, shared=[problem.shared])


def test_gradnorm_skips_zero_first_losses() -> None:
    problem = Problem(2)
    feats = problem.features()
    strategy = _build("gradnorm", TASKS2)
    losses = problem.losses(feats) * torch.tensor([1.0, 0.0])  # task 2 has no labelled sample in this batch
    ws = strategy.compute(losses, feats, shared=[problem.shared])
    assert torch.isfinite(ws.aux)
    assert strategy.has_initial.tolist() == [True, False]
    strategy.compute(problem.losses(feats), feats, shared=[problem.shared])
    assert strategy.has_initial.tolist() == [True, True]


# ---------------------------------------------------------------- checkpoint state


@pytest.mark.parametrize("name", ["dynamic", "naive_dynamic", "uncertainty", "gradnorm", "static", "dwa"])
def test_state_dict_round_trip(name: str) -> None:
    problem = Problem(3)
    torch.manual_seed(0)
    a = _build(name, TASKS3)
    feats = problem.features()
    a.compute(problem.losses(feats), feats, shared=[problem.shared])  # GradNorm records L(0)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if isinstance(a, DWAWeighting):
        for v in ([1.0, 2.0, 3.0], [0.9, 1.0, 3.5]):
            a.end_epoch(torch.tensor(v))
    torch.manual_seed(1)
    b = _build(name, TASKS3)
    b.load_state_dict(a.state_dict())
    b.load_extra_state(json.loads(json.dumps(a.extra_state())))
    feats = problem.features()
    losses = problem.losses(feats) * 1.3
    wa = a.compute(losses, feats, shared=[problem.shared])
    wb = b.compute(losses, feats, shared=[problem.shared])
    torch.testing.assert_close(wa.weights, wb.weights)
    torch.testing.assert_close(wa.total, wb.total)
    if wa.aux is not None:
        torch.testing.assert_close(wa.aux, wb.aux)
    if isinstance(a, GradNormWeighting):
        assert set(a.state_dict()) == {"task_weights", "initial_losses", "has_initial"}


def test_config_offsets_are_not_checkpointed() -> None:
    assert "base" not in _build("dynamic", TASKS2).state_dict()
    assert set(_build("static", TASKS2).state_dict()) == set()
    assert isinstance(_build("naive_dynamic", TASKS2), NaiveDynamicWeighting)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-sync detection)")
def test_compute_does_not_synchronise_on_cuda() -> None:
    problem = Problem(3)
    problem.x, problem.shared = problem.x.cuda(), nn.Parameter(problem.shared.detach().cuda())
    problem.heads = [h.cuda() for h in problem.heads]
    problem.scales = problem.scales.cuda()
    for name in weighting_names(TASKS3):
        strategy = _build(name, TASKS3).cuda()
        feats = problem.features()
        losses = problem.losses(feats)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                ws = strategy.compute(losses, feats, shared=[problem.shared])
                strategy.after_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert math.isfinite(float(ws.total.detach())), name


# ---------------------------------------------------------------- the presence mask (a task without a label)

PRESENT = torch.tensor([True, False, True])  # T = 3, the middle task has no labelled sample in the batch


def _masked_run(name: str, absent: float, **options) -> dict:
    """One ``compute`` of a fresh strategy (same seed, same problem) whose absent task's loss has the value
    ``absent`` and a real, non-zero gradient (``absent · L_1 / sg(L_1)``); returns every value and gradient."""
    problem = Problem(3)
    torch.manual_seed(7)
    strategy = _build(name, TASKS3, **options)
    feats = problem.features()
    real = problem.losses(feats)
    losses = torch.stack([real[0], absent * real[1] / real[1].detach(), real[2]])
    ws = strategy.compute(losses, feats, present=PRESENT, shared=[problem.shared])
    wrt = [problem.shared, *strategy.main_parameters()]
    out = {"total": ws.total.detach(), "weights": ws.weights.detach().clone(),
           "grads": [g if g is not None else torch.zeros_like(p) for g, p in
                     zip(torch.autograd.grad(ws.total, wrt, retain_graph=True, allow_unused=True), wrt, strict=True)],
           "buffers": {k: v.clone() for k, v in strategy.state_dict().items() if k != "task_weights"}}
    if ws.aux is not None:
        own = strategy.own_parameters()
        out["aux"] = ws.aux.detach()
        out["own_grads"] = list(torch.autograd.grad(ws.aux, own))
    return out


@pytest.mark.parametrize("name", weighting_names(TASKS3))
def test_an_absent_tasks_loss_changes_no_total_no_unit_loss_and_no_gradient(name: str) -> None:
    """Item 2 of the task-set issue: the absent task's loss at 0, 1 or 100 gives the same total, the same loss of the
    strategy's own parameters and the same gradients (network, main and own parameters), for every strategy."""
    runs = [_masked_run(name, absent) for absent in (0.0, 1.0, 100.0)]
    ref = runs[0]
    for run in runs[1:]:
        assert torch.equal(run["total"], ref["total"]), name
        assert torch.equal(run["weights"], ref["weights"]), name
        for a, b in zip(run["grads"], ref["grads"], strict=True):
            assert torch.equal(a, b), name
        assert run.keys() == ref.keys()
        if "aux" in ref:
            assert torch.equal(run["aux"], ref["aux"]), name
            for a, b in zip(run["own_grads"], ref["own_grads"], strict=True):
                assert torch.equal(a, b), name
        for k in ref["buffers"]:
            assert torch.equal(run["buffers"][k], ref["buffers"][k]), (name, k)
    # and the mask really matters: with every task present the same problem gives another total
    problem = Problem(3)
    torch.manual_seed(7)
    strategy = _build(name, TASKS3)
    feats = problem.features()
    real = problem.losses(feats)
    unmasked = strategy.compute(torch.stack([real[0], 100 * real[1] / real[1].detach(), real[2]]), feats,
                                shared=[problem.shared])
    if name != "single_verification" and name != "single_caricature":  # their weight on task 1 is 0 anyway
        assert not torch.equal(unmasked.total.detach(), ref["total"]), name


LOSSES3 = torch.tensor([2.0, 7.0, 4.0])  # task 1 (visual) is absent: its 7 must not count


def _fixed_unit(strategy, bias: list[float]) -> None:
    """Set the weight unit's FC to zero weights and ``bias``: every sample's logits are ``bias``."""
    with torch.no_grad():
        strategy.unit.logits_lossweights.weight.zero_()
        strategy.unit.logits_lossweights.bias.copy_(torch.tensor(bias))


def test_masked_formulas_by_hand_for_three_tasks() -> None:
    """T = 3 with task 1 absent, each strategy's masked formula computed by hand (docs/task_sets.md)."""
    feats = torch.randn(B, C, H, W)
    losses = LOSSES3.clone().requires_grad_(True)

    def run(name: str, **options):
        strategy = _build(name, TASKS3, **options)
        return strategy, strategy.compute(losses, feats, present=PRESENT)

    _, ws = run("static", weights=[0.55, 0.30, 0.15])
    assert ws.total.item() == pytest.approx(0.55 * 2 + 0.15 * 4)
    assert ws.weights.tolist() == pytest.approx([0.55, 0.30, 0.15])  # not renormalised over the present tasks
    assert run("equal")[1].total.item() == pytest.approx(6.0)
    assert run("single_visual")[1].total.item() == 0.0  # its only task is absent: nothing to learn from
    assert run("single_caricature")[1].total.item() == pytest.approx(4.0)

    # the paper's unit, fer variant (raw logits): per-sample softmax of log(1, 2, 3) = (1, 2, 3) / 6
    strategy = _build("dynamic", TASKS3, variant="fer")
    _fixed_unit(strategy, [0.0, math.log(2.0), math.log(3.0)])
    ws = strategy.compute(losses, feats, present=PRESENT)
    w = [1 / 6, 2 / 6, 3 / 6]
    assert ws.weights.tolist() == pytest.approx(w)
    assert ws.total.item() == pytest.approx(w[0] * 2 + w[2] * 4)
    assert ws.aux.item() == pytest.approx(w[0] / (2 + 0.01) + w[2] / (4 + 0.01))

    # the naive unit: logits (0, 0, 1) L2-normalised and halved → softmax of (0, 0, 0.5)
    strategy = _build("naive_dynamic", TASKS3)
    _fixed_unit(strategy, [0.0, 0.0, 1.0])
    ws = strategy.compute(losses, feats, present=PRESENT)
    e = math.exp(0.5)
    w = [1 / (2 + e), 1 / (2 + e), e / (2 + e)]
    assert ws.weights.tolist() == pytest.approx(w) and ws.total.item() == pytest.approx(w[0] * 2 + w[2] * 4)

    # uncertainty: the absent task's whole term, s_1 / 2 included, is dropped
    strategy = _build("uncertainty", TASKS3)
    with torch.no_grad():
        strategy.log_vars.copy_(torch.tensor([0.5, -1.0, 0.2]))
    ws = strategy.compute(losses, feats, present=PRESENT)
    assert ws.total.item() == pytest.approx(2 / (2 * math.exp(0.5)) + 0.25 + 4 / (2 * math.exp(0.2)) + 0.1)
    (g,) = torch.autograd.grad(ws.total, strategy.log_vars)
    assert g[1].item() == 0.0 and g[0].item() != 0.0

    # DWA: epoch means over the batches where the task was present; NaN (never present) counts as ratio 1
    strategy = _build("dwa", TASKS3, temperature=2.0)
    strategy.end_epoch(torch.tensor([1.0, float("nan"), 3.0]))
    strategy.end_epoch(torch.tensor([0.5, float("nan"), 3.3]))
    r = torch.tensor([0.5, 1.0, 1.1])
    w = 3 * torch.softmax(r / 2.0, dim=0)
    ws = strategy.compute(losses, feats, present=PRESENT)
    torch.testing.assert_close(ws.weights, w)
    assert ws.total.item() == pytest.approx(float(w[0] * 2 + w[2] * 4))
    with pytest.raises(ValueError, match="infinite"):
        strategy.end_epoch(torch.tensor([1.0, float("inf"), 3.0]))


def test_gradnorm_leaves_an_absent_task_out_of_the_mean_norm_and_its_initial_loss() -> None:
    problem = Problem(3)
    feats = problem.features()
    losses = problem.losses(feats)
    strategy = _build("gradnorm", TASKS3)
    ws = strategy.compute(losses, feats, present=PRESENT, shared=[problem.shared])
    norms = [float(torch.linalg.vector_norm(torch.autograd.grad(losses[t], problem.shared, retain_graph=True)[0]))
             for t in range(3)]
    # first step: r = 1, G_t = ‖∇L_t‖ (w = 1); Ḡ over tasks 0 and 2 only, so aux = |G_0 − Ḡ| + |G_2 − Ḡ| = |G_0 − G_2|
    assert ws.aux.item() == pytest.approx(abs(norms[0] - norms[2]), rel=1e-5)
    assert ws.total.item() == pytest.approx(float(losses[0].detach() + losses[2].detach()), rel=1e-6)
    assert ws.extra["grad_norm_visual"].item() == 0.0
    assert strategy.has_initial.tolist() == [True, False, True]  # L(0) of task 1 waits for a batch that has it
    (g,) = torch.autograd.grad(ws.aux, strategy.own_parameters())
    assert g[1].item() == 0.0


@pytest.mark.parametrize("update", ["gradient_step", "weights_optimizer"])
def test_gradnorm_updates_its_weights_by_algorithm_1_or_by_the_weights_optimizer(update: str) -> None:
    """Default: Chen et al.'s Algorithm 1, w ← w − lr·∇_w L_grad with no momentum and no clipping, then Σ w = T.
    ``update: weights_optimizer``: the settings' weights optimiser (TF1 RMSProp, clipped), this project's earlier
    behaviour."""
    from pipeline.settings import OptimizerSettings
    from pipeline.training.build import build_own_optimizer
    from pipeline.training.optim import TF1RMSProp

    rmsprop = OptimizerSettings(name="rmsprop_tf1", momentum=0.9, rms_decay=0.9, rms_eps=1.0, weight_decay=0.0,
                                clip_norm=5.0)
    strategy = _build("gradnorm", TASKS3, lr_weights=0.5, **({} if update == "gradient_step" else {"update": update}))
    assert strategy.own_update == update
    optimizer, clip = build_own_optimizer(strategy, rmsprop, network_lr=1e-3)
    problem = Problem(3)
    feats = problem.features()
    ws = strategy.compute(problem.losses(feats), feats, shared=[problem.shared])
    (g,) = torch.autograd.grad(ws.aux, strategy.own_parameters())
    strategy.task_weights.grad = g.clone()
    optimizer.step()
    strategy.after_step()
    if update == "gradient_step":
        assert type(optimizer) is torch.optim.SGD and clip == 0.0
        expected = (torch.ones(3) - 0.5 * g).clamp(min=1e-4)
        torch.testing.assert_close(strategy.task_weights.detach(), expected * 3 / expected.sum())
    else:
        assert isinstance(optimizer, TF1RMSProp) and clip == 5.0
        assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.state  # RMSProp slots carried to the next step
    assert float(strategy.task_weights.detach().sum()) == pytest.approx(3.0)


def test_an_empty_lr_weights_factor_is_the_variants():
    """params.yaml writes ``lr_weights_factor:`` empty, so ``-S finetune.methods.dynamic.variant=webcari`` gets
    webcari's factor 10 (docs/method.md §3) and fer keeps 1."""
    from pipeline.weighting.options import parse_weighting

    tasks = ["identity", "expression"]
    for variant, factor in (("fer", 1.0), ("cavi", 1.0), ("webcari", 10.0)):
        args = parse_weighting("dynamic", {"variant": variant, "lr_weights_factor": None}, tasks).arguments
        assert args["lr_weights_factor"] == factor, variant
    assert parse_weighting("dynamic", {"lr_weights_factor": 3}, tasks).arguments["lr_weights_factor"] == 3.0
    with pytest.raises(ValueError, match="lr_weights_factor"):
        parse_weighting("dynamic", {"lr_weights_factor": 0}, tasks)
