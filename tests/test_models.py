"""The multi-task Inception-ResNet-v1 (docs/method.md §1.1–1.3) and its checkpoints: shapes, parameter counts, BN, init,
heads, phase flags, branch copy, save/load."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from pipeline.models.blocks import Block8, Block17, Block35, ConvUnit, ReductionA, ReductionB, ScalelessBatchNorm2d
from pipeline.models.checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from pipeline.models.network import (
    FEATURES,
    HeadSpec,
    ModelConfig,
    MultiTaskInceptionResNetV1,
    count_parameters,
    l2_normalize,
)
from pipeline.settings import CropSettings, HeadSettings, NetworkSettings

N_IDS, N_EXPR = 10, 6


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(input_size: int = 96, depth: str = "reduced", keep_prob: float = 0.5, relu_logits: bool = True,
            bn_decay: float = 0.995, align_convention: str = "paper_182_44", crop: int = 160, **kw) -> ModelConfig:
    heads = (HeadSpec("identity", N_IDS), HeadSpec("expression", N_EXPR, HeadSettings(hidden=128,
                                                                                     relu_logits=relu_logits)))
    return ModelConfig(heads=heads, network=NetworkSettings(depth=depth, keep_prob=keep_prob, input_size=input_size,
                                                            bn_decay=bn_decay),
                       align_convention=align_convention, crop=CropSettings(size=crop, random=True, flip=False), **kw)


def _model(**kw) -> MultiTaskInceptionResNetV1:
    return MultiTaskInceptionResNetV1(_config(**kw))


def _bn_layers(module: nn.Module) -> list[ScalelessBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in _bn_layers(module) for t in (m.running_mean, m.running_var)]


def _block8_params_from_spec() -> int:
    """block8 per docs/method.md §1.2: B0 1×1→192; B1 1×1→192, 1×3→192, 3×1→192; up 1×1 384→1792 with bias.
    Conv units have no bias but a BN β per output channel."""
    c = FEATURES
    unit = lambda cin, cout, kh, kw: cin * cout * kh * kw + cout  # noqa: E731 - weights + β
    return (unit(c, 192, 1, 1) + unit(c, 192, 1, 1) + unit(192, 192, 1, 3) + unit(192, 192, 3, 1)
            + 384 * c + c)


# --- shapes ---------------------------------------------------------------------------------------------------------


def test_shapes_at_160_follow_the_spec_table():
    model = _model(input_size=160).eval()
    x = torch.randn(2, 3, 160, 160)
    t = model.trunk
    with torch.no_grad():
        stem = t.conv2d_4b(t.conv2d_4a(t.conv2d_3b(t.maxpool_3a(t.conv2d_2b(t.conv2d_2a(t.conv2d_1a(x)))))))
        assert stem.shape == (2, 256, 17, 17)
        m6 = t.mixed_6a(t.repeat(stem))
        assert m6.shape == (2, 896, 8, 8)
        out = model(x)
    assert out.features.shape == (2, 1792, 3, 3)
    assert model.feature_shape() == (1792, 3, 3)
    for name, n in (("identity", N_IDS), ("expression", N_EXPR)):
        assert out.branches[name].prelogits.shape == (2, 1792)
        assert out.logits(name).shape == (2, n)
    assert out.embeddings.shape == (2, 1792)


@pytest.mark.parametrize("size", [96, 75])
def test_other_input_sizes_give_the_feature_shape_the_model_announces(size):
    model = _model(input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert tuple(out.features.shape[1:]) == model.feature_shape()
    assert model.feature_shape() == (1792, 1, 1)  # 96 and 75 both end on a 1×1 grid
    assert out.branches["identity"].prelogits.shape == (2, 1792)
    assert out.logits("expression").shape == (2, N_EXPR)


def test_input_size_below_the_minimum_is_rejected():
    with pytest.raises(ValueError, match="input_size"):
        _config(input_size=74)


# --- parameter counts -----------------------------------------------------------------------------------------------


def test_block8_matches_the_spec_structure():
    assert count_parameters(Block8()) == _block8_params_from_spec()


def test_reduced_trunk_plus_identity_branch_is_about_9_6_million():
    model = _model(input_size=160)
    n = count_parameters(model.trunk) + count_parameters(model.branches["identity"])
    assert 9.55e6 <= n <= 9.8e6, n  # docs/method.md §1.2: about 9.6 M
    # the expression branch = 2 block8 (≈ 3.2 M, "each extra block8 pair") + its 1792→128→6 head
    expr = model.branches["expression"]
    blocks = sum(count_parameters(b) for b in expr.blocks())
    assert blocks == 2 * _block8_params_from_spec()
    assert 3.0e6 <= blocks <= 3.4e6
    assert count_parameters(expr) - blocks == 1792 * 128 + 128 + 128 * N_EXPR + N_EXPR


def test_full_depth_adds_the_facenet_blocks():
    reduced, full = _model(input_size=96), _model(input_size=96, depth="full")
    extra_trunk = count_parameters(full.trunk) - count_parameters(reduced.trunk)
    assert extra_trunk == 4 * count_parameters(Block35()) + 9 * count_parameters(Block17())
    extra_branch = count_parameters(full.branches["identity"]) - count_parameters(reduced.branches["identity"])
    assert extra_branch == 4 * count_parameters(Block8())
    assert len(full.trunk.repeat) == 5 and len(full.trunk.repeat_1) == 10
    assert len(full.branches["identity"].repeat_2) == 5
    assert len(reduced.trunk.repeat) == 1 and len(reduced.trunk.repeat_1) == 1
    assert len(reduced.branches["expression"].repeat_2) == 1


# --- batch norm and conv conventions --------------------------------------------------------------------------------


def test_every_bn_has_a_shift_but_no_learnable_scale():
    model = _model()
    layers = _bn_layers(model)
    assert layers and all(isinstance(m, ScalelessBatchNorm2d) for m in layers)
    for m in layers:
        assert [name for name, _ in m.named_parameters()] == ["bias"]  # β only, γ is not a parameter
        assert m.eps == 1e-3 and m.momentum == 0.005


def test_bn_normalises_with_batch_statistics_and_updates_running_stats_with_momentum_0_005():
    bn = ScalelessBatchNorm2d(3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    y = bn.train()(x)
    mean = x.mean(dim=(0, 2, 3))
    var_pop = x.var(dim=(0, 2, 3), unbiased=False)
    var_unb = x.var(dim=(0, 2, 3), unbiased=True)
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var_pop[None, :, None, None] + 1e-3) \
        + bn.bias[None, :, None, None]
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)  # γ = 1
    torch.testing.assert_close(bn.running_mean, 0.005 * mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bn.running_var, 0.995 * torch.ones(3) + 0.005 * var_unb, rtol=1e-5, atol=1e-7)
    # evaluation: the moving statistics, not the batch's
    y_eval = bn.eval()(x)
    expected_eval = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None]
                                                                            + 1e-3) + bn.bias[None, :, None, None]
    torch.testing.assert_close(y_eval, expected_eval, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decay", [0.995, 0.9])
def test_bn_decay_sets_how_fast_every_moving_statistic_follows_the_batches(decay):
    """After n training batches with per-channel mean μ, a moving mean started at 0 holds (1 − decay^n)·μ: with the
    original's 0.995 a 72-step demo run leaves 30 % of the initial 0 in every statistic evaluation uses."""
    model = _model(bn_decay=decay)
    assert {bn.momentum for bn in _bn_layers(model)} == {round(1 - decay, 12)}
    first = model.trunk.conv2d_1a[1]
    x = torch.randn(4, 3, 80, 80) + 1.5
    model.train()
    n = 5
    for _ in range(n):
        model(x)
    conv = model.trunk.conv2d_1a[0]
    with torch.no_grad():
        mu = conv(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(first.running_mean, (1 - decay**n) * mu, rtol=1e-4, atol=1e-6)


def test_bn_decay_travels_with_the_checkpoint_and_old_checkpoints_get_the_original(tmp_path):
    model = _model(bn_decay=0.9)
    path = save_model(model, tmp_path / "model.pt")
    loaded, _ = load_model(path)
    assert loaded.config.network.bn_decay == 0.9
    assert all(bn.momentum == pytest.approx(0.1) for bn in _bn_layers(loaded))
    # a checkpoint written before the settings model: flat fields, no bn_decay (its field came later)
    old = {"heads": [{"name": "identity", "n_classes": N_IDS, "hidden": None, "relu_logits": False},
                     {"name": "expression", "n_classes": N_EXPR, "hidden": 128, "relu_logits": True}],
           "depth": "reduced", "keep_prob": 0.5, "input_size": 96, "alignment": "facenet_160_32", "crop": 150,
           "class_names": {}}
    config = ModelConfig.from_dict(old)
    assert config.network.bn_decay == 0.995 and config.network.input_size == 96
    assert config.align_convention == "facenet_160_32" and config.crop.size == 150
    assert config.heads[0].head == HeadSettings(hidden=0, relu_logits=False)
    assert config.heads[1].head == HeadSettings(hidden=128, relu_logits=True)
    assert all(bn.momentum == 0.005 for bn in _bn_layers(MultiTaskInceptionResNetV1(config)))
    with pytest.raises(ValueError, match="bn_decay"):
        _config(bn_decay=1.0)


def test_conv_units_have_no_bias_and_up_convs_have_one():
    model = _model()
    units = [m for m in model.modules() if isinstance(m, ConvUnit)]
    assert len(units) > 30
    assert all(u[0].bias is None for u in units)
    ups = [m.up for m in model.modules() if isinstance(m, (Block35, Block17, Block8))]
    assert len(ups) == 1 + 1 + 2 * 2  # reduced: block35, block17, 2 block8 per branch
    assert all(u.bias is not None for u in ups)
    # the up-convs are the only convs with a bias
    with_bias = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert {id(m) for m in with_bias} == {id(u) for u in ups}


def test_reductions_concatenate_the_spec_channels():
    with torch.no_grad():
        a = ReductionA(256).eval()(torch.randn(1, 256, 17, 17))
        b = ReductionB(896).eval()(torch.randn(1, 896, 8, 8))
    assert a.shape == (1, 256 + 256 + 384, 8, 8)
    assert b.shape == (1, 384 + 256 + 256 + 896, 3, 3)


# --- initialisation -------------------------------------------------------------------------------------------------


def test_init_xavier_uniform_convs_truncated_normal_fcs_zero_biases():
    model = _model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        w = m.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound + 1e-7
        if w.numel() > 10_000:  # uniform over the whole range (PyTorch's default init stays well inside it)
            assert w.abs().max() > 0.95 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(fcs) == 3  # identity logits, expression hidden + logits
    for m in fcs:
        assert m.weight.abs().max() <= 0.2 + 1e-7
        assert torch.count_nonzero(m.bias) == 0
    big = model.branches["expression"].hidden.weight  # 128 × 1792
    # truncated at ±2σ: std = 0.1 · 0.8796
    assert big.std().item() == pytest.approx(0.08796, rel=0.03)
    assert big.abs().max() > 0.19
    for m in _bn_layers(model):
        assert torch.count_nonzero(m.bias) == 0
        assert torch.count_nonzero(m.running_mean) == 0 and torch.all(m.running_var == 1)


# --- heads and embeddings -------------------------------------------------------------------------------------------


def _manual_expression_logits(model: MultiTaskInceptionResNetV1, features: torch.Tensor) -> torch.Tensor:
    br = model.branches["expression"]
    x = br.block8(br.repeat_2(features))
    pre = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
    return br.logits(torch.relu(br.hidden(pre)))


@pytest.mark.parametrize("relu_logits", [True, False])
def test_expression_logits_pass_a_relu_only_when_asked(relu_logits):
    model = _model(relu_logits=relu_logits).eval()
    with torch.no_grad():
        model.branches["expression"].logits.bias.copy_(torch.linspace(-3, 3, N_EXPR))
        out = model(torch.randn(3, 3, 96, 96))
        raw = _manual_expression_logits(model, out.features)
    assert (raw < 0).any() and (raw > 0).any()
    expected = torch.relu(raw) if relu_logits else raw
    torch.testing.assert_close(out.logits("expression"), expected)
    if relu_logits:
        assert torch.all(out.logits("expression")[raw < 0] == 0)
    assert (out.logits("identity") < 0).any()  # the identity head is linear


def test_embeddings_are_the_unit_norm_identity_prelogits():
    model = _model().eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
        emb = model.embed(x)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.embeddings, out.branches["identity"].prelogits
                               / out.branches["identity"].prelogits.norm(dim=1, keepdim=True))
    torch.testing.assert_close(emb, out.embeddings)
    # TF l2_normalize: the 1e-10 floor keeps a zero vector finite
    assert torch.equal(l2_normalize(torch.zeros(2, 4)), torch.zeros(2, 4))


# --- phase flags ----------------------------------------------------------------------------------------------------


def test_set_phase_freezes_bn_of_the_named_parts_only():
    model = _model()
    before = {part: _bn_stats(mod) for part, mod in
              (("trunk", model.trunk), ("identity", model.branches["identity"]),
               ("expression", model.branches["expression"]))}
    model.set_phase(train=True, frozen_bn=("trunk", "identity"), dropout_off=("identity",))
    assert model.training
    model(torch.randn(4, 3, 96, 96) * 2 + 1)
    for part, mod in (("trunk", model.trunk), ("identity", model.branches["identity"])):
        assert all(torch.equal(a, b) for a, b in zip(before[part], _bn_stats(mod), strict=True)), part
    after = _bn_stats(model.branches["expression"])
    assert not all(torch.equal(a, b) for a, b in zip(before["expression"], after, strict=True))
    # the frozen parts' β still train
    assert all(m.bias.requires_grad for m in _bn_layers(model.trunk))
    # without flags every BN updates
    model.set_phase(train=True)
    trunk_before = _bn_stats(model.trunk)
    model(torch.randn(4, 3, 96, 96))
    assert not all(torch.equal(a, b) for a, b in zip(trunk_before, _bn_stats(model.trunk), strict=True))


def test_set_phase_dropout_off_makes_that_branch_deterministic_in_train_mode():
    model = _model(keep_prob=0.5)
    x = torch.randn(4, 3, 96, 96)
    model.set_phase(train=True, frozen_bn=("trunk", "identity", "expression"), dropout_off=("identity",))
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a.branches["identity"].prelogits, b.branches["identity"].prelogits, rtol=0, atol=0)
    assert not torch.equal(a.branches["expression"].prelogits, b.branches["expression"].prelogits)
    # dropout zeroes about half the expression prelogits and scales the rest by 1/keep_prob
    zeros = (a.branches["expression"].prelogits == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    model.set_phase(train=True, frozen_bn=("trunk", "identity", "expression"))
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c.branches["identity"].prelogits, d.branches["identity"].prelogits)
    model.set_phase(train=False)
    assert not any(m.training for m in model.modules())


# --- branch copy ----------------------------------------------------------------------------------------------------


def test_copy_branch_copies_blocks_and_bn_stats_but_not_heads():
    model = _model()
    src, dst = model.branches["identity"], model.branches["expression"]
    with torch.no_grad():  # make the source distinct: random β, biases and moving statistics
        for m in src.modules():
            if isinstance(m, ScalelessBatchNorm2d):
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(std=0.1)
    head_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith(("hidden.", "logits."))}
    model.copy_branch("identity", "expression")
    for a, b in zip(src.blocks(), dst.blocks(), strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in head_before.items())
    # a copy, not shared storage
    with torch.no_grad():
        src.block8.up.bias.add_(1.0)
    assert not torch.equal(src.block8.up.bias, dst.block8.up.bias)
    with torch.no_grad():
        src.block8.up.bias.sub_(1.0)
    # same blocks, same input, evaluation mode: identical prelogits
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    torch.testing.assert_close(out.branches["identity"].prelogits, out.branches["expression"].prelogits)


# --- checkpoints ----------------------------------------------------------------------------------------------------


def test_checkpoint_roundtrip_gives_identical_outputs_without_params(tmp_path):
    cfg = _config(input_size=80, align_convention="facenet_160_32",
                  class_names={"expression": ["a", "b", "c", "d", "e", "f"]})
    model = MultiTaskInceptionResNetV1(cfg)
    model.train()
    model(torch.randn(4, 3, 80, 80))  # moving statistics differ from their init
    model.eval()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        ref = model(x)
    path = save_model(model, tmp_path / "sub" / "model.pt", meta={"fold": 3, "method": "dynamic"})
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["model.pt"]  # no temp file left
    loaded, meta = load_model(path)
    assert meta == {"fold": 3, "method": "dynamic"}
    assert loaded.config == cfg
    assert not loaded.training
    with torch.no_grad():
        out = loaded(x)
    assert torch.equal(out.embeddings, ref.embeddings)
    for name in ("identity", "expression"):
        assert torch.equal(out.logits(name), ref.logits(name))
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert read_checkpoint(path)["config"]["heads"][1] == {"name": "expression", "n_classes": N_EXPR,
                                                          "head": {"hidden": 128, "relu_logits": True}}


def _one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_checkpoint_errors_are_one_line(tmp_path):
    assert "not found" in _one_line_error(tmp_path / "missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    _one_line_error(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    assert "not a model checkpoint" in _one_line_error(foreign)
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)  # needs unpickling of arbitrary classes: refused by weights_only
    _one_line_error(pickled)
