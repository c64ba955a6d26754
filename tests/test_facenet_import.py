"""facenet-pytorch InceptionResnetV1 state dicts → our full-depth trunk + identity branch.

facenet-pytorch is installed by the Makefile (``requirements-nodeps.lock``, ``--no-deps``: its own pins ask for
torch < 2.3), so this test runs under CI; it is only ever imported here, never by the pipeline.
"""

from __future__ import annotations

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from pipeline.models.checkpoint import CheckpointError
from pipeline.models.facenet_import import import_facenet, is_facenet_state_dict, read_facenet_state_dict
from pipeline.models.network import MultiTaskInceptionResNetV1
from pipeline.training.build import build_model
from tests.settings_helpers import (
    PRETRAIN_CPU,
    finetune_settings,
    finetune_spec,
    model_config,
    pretrain_settings,
    task_set,
)


def _facenet(seed: int = 0) -> InceptionResnetV1:
    """A facenet-pytorch model with random weights *and* random BN scales (some negative) and statistics."""
    torch.manual_seed(seed)
    net = InceptionResnetV1(pretrained=None, classify=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.randn(c) * 0.6 + 0.8)  # about 9 % negative
                m.bias.copy_(torch.randn(c) * 0.1)
                m.running_mean.copy_(torch.randn(c) * 0.2)
                m.running_var.copy_(torch.rand(c) * 1.5 + 0.05)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn_like(m.bias) * 0.05)
    return net.eval()


def _facenet_features(net: InceptionResnetV1, x: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's forward up to the 1792-d average pool (before dropout and the 512-d bottleneck)."""
    for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b",
                 "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8", "avgpool_1a"):
        x = getattr(net, name)(x)
    return torch.flatten(x, 1)


def _ours(depth: str = "full", input_size: int = 160) -> MultiTaskInceptionResNetV1:
    return MultiTaskInceptionResNetV1(model_config({"identity": 7, "expression": 6}, tasks=task_set(), depth=depth,
                                                   input_size=input_size))


def test_same_input_gives_the_same_1792_d_features_as_facenet_pytorch(tmp_path):
    net = _facenet()
    path = tmp_path / "vggface2-like.pt"
    torch.save(net.state_dict(), path)
    model = _ours()
    untouched = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("branches.expression.",
                                                                                      "branches.identity.logits."))}
    report = import_facenet(read_facenet_state_dict(path), model, source=str(path))
    assert report.convs == 132 and report.batch_norms == 132 - 21  # all but the up-convs of 5 + 10 + 5 + 1 blocks
    assert report.negative_scales > 0  # the sign folding is exercised
    not_counters = {k.split(".")[0] for k in report.skipped if not k.endswith("num_batches_tracked")}
    assert {"last_linear", "last_bn"} <= not_counters <= {"last_linear", "last_bn", "logits"}
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        ref = _facenet_features(net, x)
        ours = model.branches["identity"](model.trunk(x)).prelogits
    assert ours.shape == ref.shape == (3, 1792)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # the other branch and the identity head are not touched
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in untouched.items())


def test_frozen_bn_keeps_the_imported_features_in_training_mode():
    """Fine-tuning from an import freezes trunk and identity BN (freeze_pretrained_bn): the folded γ survives."""
    net = _facenet(seed=2)
    model = _ours(input_size=96)
    import_facenet(net.state_dict(), model)
    model.set_phase(train=True, frozen_bn=("trunk", "identity"), dropout_off=("identity",))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = _facenet_features(net, x)
        ours = model.branches["identity"](model.trunk(x)).prelogits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_reduced_depth_and_foreign_files_are_one_line_errors(tmp_path):
    state = _facenet().state_dict()
    with pytest.raises(CheckpointError, match="depth 'full'"):
        import_facenet(state, _ours(depth="reduced"))
    broken = dict(state)
    del broken["repeat_2.3.branch1.1.conv.weight"]
    with pytest.raises(CheckpointError, match="conv layers where") as info:
        import_facenet(broken, _ours())
    assert "\n" not in str(info.value)
    wrong = dict(state)
    wrong["mixed_6a.branch0.bn.running_var"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"mixed_6a\.branch0\.bn\.running_var has shape \(3,\)"):
        import_facenet(wrong, _ours())
    ours_file = tmp_path / "ours.pt"
    torch.save(_ours().state_dict(), ours_file)
    assert not is_facenet_state_dict(torch.load(ours_file, weights_only=True))
    with pytest.raises(CheckpointError, match="not a facenet-pytorch InceptionResnetV1 state dict"):
        read_facenet_state_dict(ours_file)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        read_facenet_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_facenet_state_dict(tmp_path / "missing.pt")


def test_finetune_init_accepts_a_facenet_file_and_copies_the_branch(tmp_path):
    """``finetune.common.init: <facenet file>``: trunk + identity branch imported, expression branch copied from it
    (docs/method.md §4.5), so both branches give facenet's features before any training."""
    net = _facenet(seed=3)
    path = tmp_path / "casia-webface-like.pt"
    torch.save(net.state_dict(), path)
    settings = finetune_settings(**{"network.depth": "full", "network.input_size": 96})
    spec = finetune_spec(settings, weighting="static", n_classes={"identity": 7, "expression": 6},
                         checkpoint=str(path))
    model = build_model(spec, torch.device("cpu")).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = _facenet_features(net, x)
        features = model.trunk(x)
        for name in ("identity", "expression"):
            torch.testing.assert_close(model.branches[name](features).prelogits, ref, rtol=1e-4,
                                       atol=1e-4 * float(ref.abs().max()))


def test_a_facenet_file_initialises_pretraining_and_its_features_survive(tmp_path):
    """``pretrain.train.init``: the pretraining model (one identity head, other classes) starts from the file; its
    1792-d features in evaluation mode are facenet-pytorch's."""
    from pipeline.training.pretrain import build_pretrain_model, pretrain_spec

    net = _facenet(1)
    path = tmp_path / "casia-like.pt"
    torch.save(net.state_dict(), path)

    def spec(depth: str):
        settings = pretrain_settings(**{"network.depth": depth, "network.input_size": 96})
        return pretrain_spec(settings, n_classes=11, align_convention="paper_182_44", checkpoint=str(path),
                             runtime=PRETRAIN_CPU)

    model = build_pretrain_model(spec("full")).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = model.branches["identity"](model.trunk(x)).prelogits
        torch.testing.assert_close(ours, _facenet_features(net, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError):
        build_pretrain_model(spec("reduced"))
