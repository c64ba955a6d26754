"""The CUDA path of the training core: bf16 autocast, channels_last, GPU-resident uint8 data (skipped without CUDA).

Run on a GPU box with ``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/test_training_cuda.py`` (the test suite hides
GPUs unless ``CUDA_VISIBLE_DEVICES`` is set explicitly).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.models.network import MultiTaskInceptionResNetV1
from pipeline.settings import OptimizerSettings
from pipeline.training.build import FinetuneSpec, build_training
from pipeline.training.data import LabelledImages, preprocess
from tests.settings_helpers import CPU, finetune_settings, finetune_spec, head, model_config, task_set

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _spec(method: str, *, amp: bool, device: str = "cuda") -> FinetuneSpec:
    settings = finetune_settings(**{
        "init": "random", "network.input_size": 96, "schedule.lr": 1e-3, "precision.amp": amp,
        "precision.channels_last": True,
        "optimizer": OptimizerSettings(name="rmsprop_tf1", momentum=0.9, rms_decay=0.9, rms_eps=1.0, weight_decay=0.0,
                                       clip_norm=5.0)})
    tasks = task_set(**{"tasks.expression.head": head(128, relu_logits=True)})
    return finetune_spec(settings, tasks, weighting=method, n_classes={"identity": 10, "expression": 6},
                         runtime=dataclasses.replace(CPU, device=device))


def _batch(n: int, device: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 110, 110), dtype=torch.uint8, generator=g)
    labels = {"identity": torch.randint(0, 10, (n,), generator=g), "expression": torch.randint(0, 6, (n,), generator=g)}
    data = LabelledImages(images, labels, [str(i) for i in range(n)]).to(device)
    x = preprocess(data.images, crop=100, input_size=96, train=True, channels_last=True,
                   generator=torch.Generator(device=device).manual_seed(1))
    return x, data.labels


@pytest.mark.parametrize("method", ["dynamic", "naive_dynamic", "gradnorm", "uncertainty", "static"])
def test_bf16_step_trains_every_part(method: str) -> None:
    torch.manual_seed(0)
    parts = build_training(_spec(method, amp=True), torch.device("cuda"))
    parts.model.set_phase(train=True)
    before = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    x, labels = _batch(16, "cuda")
    assert x.is_contiguous(memory_format=torch.channels_last)
    results = [parts.step(x, labels) for _ in range(3)]
    for r in results:
        assert np.isfinite(r.losses).all() and np.isfinite(r.weights).all() and np.isfinite(r.grad_norm)
    changed = [k for k, v in parts.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("trunk.") for k in changed) and any(k.startswith("branches.expression") for k in changed)
    if method in ("dynamic", "naive_dynamic"):
        assert abs(sum(results[-1].weights) - 1.0) < 1e-3


def test_cuda_forward_matches_cpu_in_fp32() -> None:
    torch.manual_seed(0)
    model = MultiTaskInceptionResNetV1(model_config({"identity": 10}, input_size=96)).eval()
    x = torch.randn(4, 3, 96, 96)
    ref = model(x).embeddings
    gpu = model.to("cuda").to(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        out = gpu(x.to("cuda").contiguous(memory_format=torch.channels_last)).embeddings.cpu()
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)


def test_nvjpeg_decodes_a_shard_batch_close_to_opencv(tmp_path) -> None:
    """``pretrain.decode: device`` on CUDA: nvJPEG's batched decode of real shard JPEGs ≈ the workers' OpenCV pixels."""
    from pipeline.faces.shards import write_shard
    from pipeline.training.shard_data import ShardFaces
    from pipeline.training.shard_decode import decode_faces

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:182, 0:182].astype(np.float32)
    crops = [np.clip(rng.uniform(40, 200, 3) + 40 * np.sin((xx * rng.uniform(0.02, 0.1)) + yy * 0.03)[..., None]
                     + rng.normal(0, 4, (182, 182, 3)), 0, 255).astype(np.uint8) for _ in range(64)]
    ranges = write_shard(tmp_path / "shard-00000.tar", crops)
    faces = ShardFaces(tmp_path, np.zeros(64), [o for o, _ in ranges], [n for _, n in ranges], np.arange(64), 182)
    idx = list(range(64))
    cpu = faces.__getitems__(idx)[0]
    gpu = decode_faces(faces.encoded().__getitems__(idx), faces, "cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert int(diff.max()) <= 10 and float(diff.float().mean()) < 1.0  # IDCT and chroma upsampling differ slightly


def test_nvjpeg_decode_waits_for_work_queued_on_the_callers_stream(tmp_path) -> None:
    """Tensors freed while kernels that read them are still queued must not be overwritten by the decode
    (nvJPEG's hardware decoder ignores the caller's stream: pytorch/vision#9606; ``decode_faces`` synchronises)."""
    from pipeline.faces.shards import write_shard
    from pipeline.training.shard_data import ShardFaces
    from pipeline.training.shard_decode import decode_faces

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (182, 182, 3), dtype=np.uint8) for _ in range(32)]
    ranges = write_shard(tmp_path / "shard-00000.tar", crops)
    faces = ShardFaces(tmp_path, np.zeros(32), [o for o, _ in ranges], [n for _, n in ranges], np.arange(32), 182)
    batch = faces.encoded().__getitems__(list(range(32)))
    for _ in range(5):
        victims = [torch.full((3, 182, 182), 7, dtype=torch.uint8, device="cuda") for _ in range(32)]
        torch.cuda._sleep(200_000_000)  # keep the stream busy, so the reads below are still queued at the decode
        sums = [v.sum(dtype=torch.int64) for v in victims]
        del victims  # their blocks go back to the allocator while the sums are queued: the decode's outputs get them
        decode_faces(batch, faces, "cuda")
        assert all(int(s) == 7 * 3 * 182 * 182 for s in sums)
