"""Pretraining (pipeline/training/pretrain.py, shard_data.py): data order, learning, resume, DDP equivalence.

Synthetic shards: 4 identities x 6 faces of 88 px whose colour layout depends on the identity, written with the
align stage's own shard writer, so the real streaming reader decodes real JPEGs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import DatasetError
from pipeline.faces.shards import write_shard
from pipeline.training.distributed import DistContext
from pipeline.training.pretrain import PretrainSpec, pretrain_spec, run_pretrain
from pipeline.training.shard_data import EncodedBatch, ShardBatchSampler, ShardFaces, make_loader, next_batch
from pipeline.training.shard_decode import decode_faces, is_jpeg
from tests.conftest import REPO
from tests.settings_helpers import PRETRAIN_CPU, pretrain_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IDS, PER_ID, SIZE = 4, 6, 88


def _face(identity: int, k: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(0, 40, (SIZE, SIZE, 3)).astype(np.uint8)
    q = SIZE // 2
    img[(identity // 2) * q:(identity // 2 + 1) * q, (identity % 2) * q:(identity % 2 + 1) * q, identity % 3] += 180
    img[:, :, (k % 3)] += 10
    return img


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two shards (12 faces each, identities interleaved) + ``index.npz`` (shard, offset, length, labels, size)."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_IDS), PER_ID)
    rng.shuffle(labels)
    half = len(labels) // 2
    shard, offset, length = [], [], []
    for s, part in enumerate((labels[:half], labels[half:])):
        ranges = write_shard(root / f"shard-{s:05d}.tar", [_face(int(y), k, rng) for k, y in enumerate(part)])
        shard += [s] * len(part)
        offset += [o for o, _ in ranges]
        length += [n for _, n in ranges]
    np.savez(root / "index.npz", shard=np.array(shard), offset=np.array(offset), length=np.array(length),
             labels=labels, size=SIZE)
    return root


def _faces(root: Path) -> ShardFaces:
    m = np.load(root / "index.npz")
    return ShardFaces(root, m["shard"], m["offset"], m["length"], m["labels"], int(m["size"]))


def _spec(workers: int = 0, decode: str = "worker", **changes) -> PretrainSpec:
    """``params.yaml``'s pretraining settings on the tiny shards: 6 steps of 8 faces at input 80, no augmentation."""
    settings = pretrain_settings(**{
        "network.keep_prob": 0.8, "network.input_size": 80, "network.bn_decay": 0.9, "crop.size": 80,
        "steps": 6, "batch_size": 8, "optimizer.name": "adam", "optimizer.clip_norm": 5.0, "schedule.lr": 1e-3,
        "schedule.boundaries": [], "checkpoint_every": 2, "eval_every": 1000, "log_every": 1,
        "precision.amp": False, "seed": 5, **changes})
    return pretrain_spec(settings, n_classes=N_IDS, align_convention="paper_182_44", checkpoint=None,
                         runtime=dataclasses.replace(PRETRAIN_CPU, workers=workers, decode=decode))


# --- the data order ------------------------------------------------------------------------------------------------


def test_each_epoch_is_a_permutation_and_the_ranks_split_each_global_batch(shards):
    faces = _faces(shards)
    one = ShardBatchSampler(faces.shard, 8, seed=1)
    two = [ShardBatchSampler(faces.shard, 8, seed=1, rank=r, world=2) for r in (0, 1)]
    assert one.batches_per_epoch == 3
    seen = np.concatenate([one.batch(s) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(24))  # one epoch = every face once
    for step in range(7):
        assert np.array_equal(np.concatenate([two[0].batch(step), two[1].batch(step)]), one.batch(step))
        assert not set(two[0].batch(step)) & set(two[1].batch(step))
    assert not np.array_equal(one.epoch_order(0), one.epoch_order(1))  # a fresh permutation every epoch


def test_window_shuffle_mixes_whole_shards_and_resumes_mid_stream(shards):
    faces = _faces(shards)
    s = ShardBatchSampler(faces.shard, 4, seed=2, window=1)
    order = s.epoch_order(0)
    first = faces.shard[order[:12]]
    assert len(set(first)) == 1 and len(set(faces.shard[order[12:]])) == 1  # one shard at a time
    assert sorted(order.tolist()) == list(range(24))
    it = iter(ShardBatchSampler(faces.shard, 4, seed=2, window=1, start_step=7))
    assert next(it) == s.batch(7).tolist()
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ShardBatchSampler(faces.shard, 8, seed=0, world=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardBatchSampler(faces.shard, 32, seed=0)


def test_loader_workers_deliver_the_samplers_batches_in_order(shards):
    faces = _faces(shards)
    sampler = ShardBatchSampler(faces.shard, 6, seed=4)
    loader = make_loader(faces, sampler, workers=2, prefetch=2)
    batches = [b for _, b in zip(range(5), loader, strict=False)]
    for step, (x, y) in enumerate(batches):
        idx = sampler.batch(step)
        assert x.dtype == torch.uint8 and x.shape == (6, 3, SIZE, SIZE)
        assert torch.equal(y, torch.from_numpy(faces.labels[idx]))
        assert torch.equal(x[0], faces[int(idx[0])][0])


def test_a_corrupt_shard_is_a_clear_error(tmp_path, shards):
    m = np.load(shards / "index.npz")
    faces = _copy_with_corrupt_first_face(shards, tmp_path / "shards")
    with pytest.raises(DatasetError, match="shard-00000.tar"):
        faces.__getitems__([0])
    # through a worker process: the same single line, not DataLoader's wrapper with the worker's traceback
    first = int(np.flatnonzero(m["shard"] == 0)[0])
    order = [first] + [i for i in range(len(faces)) if i != first]
    sampler = ShardBatchSampler(faces.shard, 4, seed=0)
    sampler.epoch_order = lambda epoch: np.array(order)  # the corrupt face in the first batch
    batches = iter(make_loader(faces, sampler, workers=1, prefetch=1))
    with pytest.raises(DatasetError) as err:
        next_batch(batches)
    msg = str(err.value)
    assert "\n" not in msg and "shard-00000.tar" in msg and "do not decode as an image" in msg
    assert not msg.startswith("pipeline.errors")


# --- decoding on the training device (decode: device) ---------------------------------------------------------------


def _copy_with_corrupt_first_face(src: Path, dst: Path) -> ShardFaces:
    """The fixture's shards with the first 64 bytes of shard 0's first face zeroed."""
    m = np.load(src / "index.npz")
    dst.mkdir()
    for f in src.glob("shard-*.tar"):
        data = bytearray(f.read_bytes())
        data[int(m["offset"][0]) : int(m["offset"][0]) + 64] = b"\0" * 64
        (dst / f.name).write_bytes(bytes(data))
    return ShardFaces(dst, m["shard"], m["offset"], m["length"], m["labels"], int(m["size"]))


def test_encoded_batches_decode_to_exactly_the_workers_pixels(shards, tmp_path):
    faces = _faces(shards)
    sampler = ShardBatchSampler(faces.shard, 6, seed=4)
    decoded = [b for _, b in zip(range(4), make_loader(faces, sampler, workers=1, prefetch=2), strict=False)]
    encoded = [b for _, b in zip(range(4), make_loader(faces, sampler, workers=1, prefetch=2, decode="device"),
                                 strict=False)]
    for step, ((x, y), enc) in enumerate(zip(decoded, encoded, strict=True)):
        assert isinstance(enc, EncodedBatch) and enc.offsets.shape == (7,) and is_jpeg(enc).all()
        assert torch.equal(enc.index, torch.from_numpy(sampler.batch(step)))
        # ~ the JPEG bytes, not the decoded 3 x 88 x 88 per face, went through shared memory
        assert enc.data.numel() == int(faces.length[sampler.batch(step)].sum()) < x.numel() / 2
        assert torch.equal(enc.labels, y)
        assert torch.equal(decode_faces(enc, faces, "cpu"), x)  # libjpeg-turbo through torchvision = OpenCV
    # PNG shards (align.format: png) decode the same way, one face at a time
    crops = [faces[i][0].permute(1, 2, 0).numpy() for i in range(5)]
    ranges = write_shard(tmp_path / "shard-00000.tar", crops, fmt="png")
    png = ShardFaces(tmp_path, np.zeros(5), [o for o, _ in ranges], [n for _, n in ranges], np.arange(5), SIZE)
    enc = png.encoded().__getitems__([4, 0, 2])
    assert not is_jpeg(enc).any()
    assert torch.equal(decode_faces(enc, png, "cpu"), torch.from_numpy(np.stack([crops[k] for k in (4, 0, 2)]))
                       .permute(0, 3, 1, 2))


def test_an_undecodable_or_wrong_size_face_is_a_one_line_error_when_decoding_on_the_device(shards, tmp_path):
    m = np.load(shards / "index.npz")
    # a face whose first bytes are zeroed (not a JPEG any more) and one cut in half (a JPEG that stops early: the
    # batched JPEG decoder fails on it)
    zeroed = _copy_with_corrupt_first_face(shards, tmp_path / "bad")
    length = m["length"].copy()
    length[2] //= 2
    cut = ShardFaces(shards, m["shard"], m["offset"], length, m["labels"], int(m["size"]))
    for faces, bad, is_jpeg_file in ((zeroed, 0, False), (cut, 2, True)):
        batch = faces.encoded().__getitems__([3, bad, 5])
        assert is_jpeg(batch).tolist() == [True, is_jpeg_file, True]
        with pytest.raises(DatasetError) as err:
            decode_faces(batch, faces, "cpu")
        msg = str(err.value)
        assert "\n" not in msg and f"offset {m['offset'][bad]}:" in msg and "do not decode as an image" in msg
    small = ShardFaces(shards, m["shard"], m["offset"], m["length"], m["labels"], SIZE + 2)
    with pytest.raises(DatasetError, match=f"a {SIZE}x{SIZE} crop, expected {SIZE + 2}: re-run the align stage"):
        decode_faces(small.encoded().__getitems__([1]), small, "cpu")


def test_decoding_on_the_device_trains_bit_identically_on_the_cpu(shards, tmp_path, monkeypatch):
    import pipeline.training.shard_decode as shard_decode

    decoded = []
    real = shard_decode.decode_faces
    monkeypatch.setattr(shard_decode, "decode_faces", lambda b, f, d: decoded.append(len(b.labels)) or real(b, f, d))
    faces = _faces(shards)
    worker = run_pretrain(_spec(steps=3, workers=1), faces, tmp_path / "a", DistContext())
    assert decoded == []
    device = run_pretrain(_spec(steps=3, workers=1, decode="device"), faces, tmp_path / "b", DistContext())
    assert decoded == [8, 8, 8]  # every batch arrived encoded and was decoded in this process
    assert worker.rows == device.rows
    for k, v in worker.model.state_dict().items():
        assert torch.equal(v, device.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="decode must be one of worker, device, got 'gpu'"):
        _spec(decode="gpu")


# --- the loop ------------------------------------------------------------------------------------------------------


def test_lr_boundaries_divide_the_rate():
    spec = _spec(**{"schedule.lr": 0.1, "schedule.boundaries": [60000, 80000], "schedule.decay": 0.1})
    rates = [spec.schedule.at(s) for s in (0, 59999, 60000, 79999, 80000)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_pretraining_learns_the_identities_and_moves_the_centers(shards, tmp_path):
    result = run_pretrain(_spec(steps=24, checkpoint_every=24, log_every=4), _faces(shards), tmp_path / "w",
                          DistContext())
    for r in result.rows:  # means over 4 steps of batch 8: accuracies are multiples of 1/32
        assert 0.0 <= r["train_accuracy"] <= 1.0 and (r["train_accuracy"] * 32) == pytest.approx(
            round(r["train_accuracy"] * 32))
        assert r["loss"] == pytest.approx(r["cross_entropy"] + 0.1 * r["center_loss"], rel=1e-5)
        assert r["grad_norm"] > 0
    ce = [r["cross_entropy"] for r in result.rows]
    assert ce[-1] < 0.5 * ce[0]  # chance is ln 4 = 1.39
    assert result.rows[-1]["train_accuracy"] >= 0.75
    assert float(result.centers.centers.norm(dim=1).min()) > 0.1  # every identity's center left zero
    assert [r["step"] for r in result.rows] == [4, 8, 12, 16, 20, 24]
    assert result.metrics["last"]["step"] == 24 and result.metrics["images_seen"] == 24 * 8


def test_facenets_center_loss_form_trains_on_the_raw_prelogits(shards, tmp_path):
    """``center_loss.form: facenet``: the term is facenet's mean over the batch and the 1792 dimensions of
    ``(f - c)^2`` on the raw prelogits ``f``. From zero centers the first step's term is ``mean(f^2)``, not the
    ``0.5`` of ``metrics_loss`` (``0.5 ||e||^2`` of unit embeddings) nor the ``1/1792`` the embeddings would give;
    the cross-entropy of that first step is the same in both forms (no update yet). The run trains: finite rows,
    falling cross-entropy, every center moved."""
    faces = _faces(shards)
    facenet = run_pretrain(_spec(steps=8, checkpoint_every=8, log_every=1, **{"center_loss.form": "facenet"}),
                           faces, tmp_path / "facenet", DistContext())
    ours = run_pretrain(_spec(steps=1, log_every=1), faces, tmp_path / "metrics_loss", DistContext())
    assert facenet.centers.form == "facenet" and ours.centers.form == "metrics_loss"
    for r in facenet.rows:
        assert all(np.isfinite(r[k]) for k in ("loss", "cross_entropy", "center_loss", "grad_norm"))
        assert r["loss"] == pytest.approx(r["cross_entropy"] + 0.1 * r["center_loss"], rel=1e-5)
    assert ours.rows[0]["center_loss"] == pytest.approx(0.5, rel=1e-6)
    assert facenet.rows[0]["cross_entropy"] == ours.rows[0]["cross_entropy"]
    assert facenet.rows[0]["center_loss"] > 10 / 1792 and facenet.rows[0]["center_loss"] != pytest.approx(0.5)
    # every identity's center moved, out of the unit ball that centers of unit embeddings stay in
    assert float(facenet.centers.centers.norm(dim=1).min()) > 1.0
    ce = [r["cross_entropy"] for r in facenet.rows]
    assert np.mean(ce[-3:]) < np.mean(ce[:3])


def test_verification_is_evaluated_every_eval_every_steps(shards, tmp_path):
    from pipeline.training.evaluate import EvalData

    faces = _faces(shards)
    images = torch.stack([faces[i][0] for i in range(len(faces))])
    a, b = np.triu_indices(len(faces), 1)
    same = faces.labels[a] == faces.labels[b]
    verify = EvalData(images=images, pair_a=a, pair_b=b, same=same, labels={}, class_names={})
    seen = []
    result = run_pretrain(_spec(steps=4, eval_every=2, **{"protocol.n_folds": 2}), faces, tmp_path / "w",
                          DistContext(),
                          verify=verify, on_eval=seen.append)
    assert [e["step"] for e in result.history] == [2, 4] and seen == result.history
    assert 0.0 <= result.history[-1]["verification_accuracy"] <= 1.0
    assert result.metrics["verification"]["last"]["step"] == 4


def test_resume_from_a_checkpoint_ends_bit_identical(shards, tmp_path):
    faces = _faces(shards)
    full = run_pretrain(_spec(), faces, tmp_path / "full", DistContext())
    # a run stopped after its checkpoint at step 4, then resumed (the state file is all that survives)
    part_dir = tmp_path / "part"
    run_pretrain(_spec(steps=4), faces, part_dir, DistContext())
    resumed = run_pretrain(_spec(), faces, part_dir, DistContext())
    assert resumed.resumed_from == 4
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert torch.equal(full.centers.centers, resumed.centers.centers)
    assert full.rows == resumed.rows


def test_a_state_file_of_another_kind_is_refused(shards, tmp_path):
    (tmp_path / "w").mkdir()
    torch.save({"format": "something-else"}, tmp_path / "w" / "state.pt")
    with pytest.raises(ValueError, match="not a pretraining state file"):
        run_pretrain(_spec(), _faces(shards), tmp_path / "w", DistContext())


def test_a_diverging_run_stops_with_a_clear_message_before_updating(shards, tmp_path):
    from pipeline.training.step import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite value in a pretraining step"):
        run_pretrain(_spec(steps=3, **{"schedule.lr": float("inf"), "optimizer.name": "sgd"}), _faces(shards),
                     tmp_path / "w", DistContext())


# --- DDP under torchrun --------------------------------------------------------------------------------------------


def _worker(args: list[str], torchrun: int | None) -> None:
    script = str(REPO / "tests" / "pretrain_ddp_worker.py")
    cmd = [sys.executable, script, *args] if torchrun is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", script, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(shards, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, DDP): after 2 steps the parameters, BN buffers and center-loss centers
    equal a single process's with the same global batch; without the all-reduce of the center statistics each rank
    would move the centers toward its own half-batch only."""
    _worker([str(shards), str(tmp_path / "one"), "2", "8"], None)
    _worker([str(shards), str(tmp_path / "two"), "2", "8"], 2)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for k, v in one["model"].items():
        for r in ranks:
            torch.testing.assert_close(r["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    for r in ranks:
        torch.testing.assert_close(r["centers"], one["centers"], rtol=1e-5, atol=1e-7)
    assert float(one["centers"].abs().sum()) > 0
    for key in ("loss", "cross_entropy", "center_loss", "train_accuracy"):  # rank-means = the global batch's
        assert ranks[0]["rows"][-1][key] == pytest.approx(one["rows"][-1][key], rel=1e-4, abs=1e-6)
