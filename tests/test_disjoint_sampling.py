"""Samplers over disjoint sources (pipeline/disjoint/sampling.py): joint batch shares and epoch length as in SA-MTL's
``confusion_*_generator.py``, alternating epochs as in its ``alternate_*_generator.py``, determinism and resuming."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.disjoint.sampling import AlternatingSampler, JointSampler, SourceRanges, joint_counts, source_seed


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _split(batch: torch.Tensor, counts: tuple[int, ...]) -> list[torch.Tensor]:
    return list(batch.split(list(counts)))


def test_source_ranges_offsets_bounds_and_source_of():
    r = SourceRanges.from_sizes([300, 100, 5])
    assert r.offsets == (0, 300, 400) and r.total == 405 and len(r) == 3
    assert r.bounds(1) == (300, 400)
    idx = torch.tensor([0, 299, 300, 399, 400, 404])
    assert r.source_of(idx).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(("sizes", "batch", "expected", "steps"), [
    ((300, 100), 32, (24, 8), 12),               # int(32·0.75) = 24, remainder 8; min(300//24, 100//8) = 12
    ((100, 100, 101), 10, (3, 3, 4), 25),        # int(10·100/301) = 3 twice, last gets 4; min(33, 33, 25)
    ((1000, 3000), 10, (2, 8), 375),             # int(2.5) = 2; min(500, 375)
])
def test_joint_proportional_shares_remainder_to_last_and_min_epoch(sizes, batch, expected, steps):
    sampler = JointSampler(sizes, batch, seed=0)
    assert sampler.counts == expected and sampler.steps_per_epoch == steps
    r = SourceRanges.from_sizes(sizes)
    for _ in range(5):
        b = sampler.next()
        assert b.dtype == torch.int64 and b.shape == (batch,) and b.device.type == "cpu"
        for s, part in enumerate(_split(b, expected)):
            lo, hi = r.bounds(s)
            assert ((part >= lo) & (part < hi)).all()


def test_joint_epoch_draws_each_source_without_repeats():
    sizes, batch = (300, 100), 32
    sampler = JointSampler(sizes, batch, seed=3)
    batches = [sampler.next() for _ in range(sampler.steps_per_epoch)]
    per_source = [torch.cat([_split(b, sampler.counts)[s] for b in batches]) for s in range(2)]
    # 12 batches: 12 · 24 = 288 of source 0's 300 and 12 · 8 = 96 of source 1's 100, all within one permutation
    for part, (lo, hi), drawn in zip(per_source, ((0, 300), (300, 400)), (288, 96), strict=True):
        assert part.numel() == drawn and part.unique().numel() == drawn
        assert part.min() >= lo and part.max() < hi


def test_joint_fixed_epoch():
    sampler = JointSampler((300, 100), 32, seed=0, epoch="fixed", fixed_steps=7)
    assert sampler.steps_per_epoch == 7


def test_temperature_flattens_shares_and_keeps_one_image_per_source():
    assert joint_counts((900, 100), 20) == (18, 2)
    assert joint_counts((900, 100), 20, ratios="temperature", temperature=1.0) == (18, 2)
    assert joint_counts((900, 100), 20, ratios="temperature", temperature=2.0) == (15, 5)  # √900 : √100 = 3 : 1
    assert joint_counts((900, 100), 20, ratios="temperature", temperature=1e6) == (10, 10)
    assert joint_counts((900, 100), 20, ratios="temperature", temperature=0.5) == (19, 1)  # 81 : 1 → int(19.76)
    # tiny first source: proportional would give it 0 (the original divides by zero), temperature bumps it to 1
    with pytest.raises(ValueError, match="source 0"):
        joint_counts((1, 10000), 8)
    assert joint_counts((1, 10000), 8, ratios="temperature") == (1, 7)
    # floors overshoot the batch: the largest share gives images back so the last source keeps one
    assert joint_counts((1000, 1, 1, 1), 4, ratios="temperature") == (1, 1, 1, 1)
    sampler = JointSampler((900, 100), 20, seed=0, ratios="temperature", temperature=2.0)
    assert sampler.counts == (15, 5) and sampler.steps_per_epoch == min(900 // 15, 100 // 5)


def test_joint_determinism_and_per_source_seeds():
    a = [JointSampler((300, 100), 32, seed=5).next() for _ in range(1)]
    s1, s2, s3 = JointSampler((300, 100), 32, seed=5), JointSampler((300, 100), 32, seed=5), \
        JointSampler((300, 100), 32, seed=6)
    first = [s1.next() for _ in range(4)]
    assert all(torch.equal(x, s2.next()) for x in first) and torch.equal(a[0], first[0])
    assert not all(torch.equal(x, s3.next()) for x in first)
    assert len({source_seed(5, s) for s in range(3)} | {source_seed(6, s) for s in range(3)}) == 6


def test_joint_resume_continues_with_identical_batches():
    ref = JointSampler((100, 100, 101), 10, seed=11)
    run = JointSampler((100, 100, 101), 10, seed=11)
    for _ in range(37):  # crosses source 2's permutation boundary (101 / 4 per batch)
        ref.next()
        run.next()
    state = _roundtrip(run.state_dict())
    resumed = JointSampler((100, 100, 101), 10, seed=999)  # seed is overwritten by the state
    resumed.load_state_dict(state)
    for _ in range(40):
        assert torch.equal(ref.next(), resumed.next())


def test_alternating_epochs_sources_steps_and_batches():
    sizes, batch = (10, 7), 4
    sampler = AlternatingSampler(sizes, batch, seed=0)
    r = SourceRanges.from_sizes(sizes)
    assert [sampler.active_source(e) for e in (1, 2, 3, 4)] == [0, 1, 0, 1]
    assert [sampler.steps(e) for e in (1, 2, 3)] == [3, 2, 3]  # ceil(10/4), ceil(7/4)
    for epoch, lens in ((1, [4, 4, 2]), (2, [4, 3]), (3, [4, 4, 2])):
        s = sampler.active_source(epoch)
        lo, hi = r.bounds(s)
        got = [sampler.next(epoch) for _ in range(sampler.steps(epoch))]
        assert [len(b) for b in got] == lens and all(b.dtype == torch.int64 for b in got)
        # one whole pass: every image of the active source exactly once, nothing from the other one
        assert sorted(torch.cat(got).tolist()) == list(range(lo, hi))
    assert AlternatingSampler((10, 7, 9), 4, seed=0).active_source(3) == 2


def test_alternating_passes_are_fresh_permutations_and_deterministic():
    a, b, c = (AlternatingSampler((50, 30), 8, seed=s) for s in (1, 1, 2))
    ea1 = torch.cat([a.next(1) for _ in range(a.steps(1))])
    a.next(2)
    ea3 = torch.cat([a.next(3) for _ in range(a.steps(3))])
    assert not torch.equal(ea1, ea3) and sorted(ea3.tolist()) == list(range(50))
    eb1 = torch.cat([b.next(1) for _ in range(b.steps(1))])
    ec1 = torch.cat([c.next(1) for _ in range(c.steps(1))])
    assert torch.equal(ea1, eb1) and not torch.equal(ea1, ec1)


def test_alternating_resume_mid_epoch():
    ref, run = AlternatingSampler((50, 30), 8, seed=4), AlternatingSampler((50, 30), 8, seed=4)
    for sampler in (ref, run):
        for _ in range(sampler.steps(1)):
            sampler.next(1)
        sampler.next(2)
    resumed = AlternatingSampler((50, 30), 8, seed=0)
    resumed.load_state_dict(_roundtrip(run.state_dict()))
    rest = [(2, ref.steps(2) - 1), (3, ref.steps(3)), (4, ref.steps(4))]
    for epoch, n in rest:
        for _ in range(n):
            assert torch.equal(ref.next(epoch), resumed.next(epoch))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: JointSampler((300, 0), 32, seed=0), "source 1"),
    (lambda: AlternatingSampler((0, 5), 4, seed=0), "source 0"),
    (lambda: JointSampler((), 4, seed=0), "sizes"),
    (lambda: JointSampler((10, 10, 10), 2, seed=0), "batch_size"),
    (lambda: JointSampler((10, 10), 0, seed=0), "batch_size"),
    (lambda: AlternatingSampler((10, 10), 0, seed=0), "batch_size"),
    (lambda: JointSampler((10, 10), 4, seed=-1), "seed"),
    (lambda: JointSampler((10, 10), 4, seed=0, epoch="max"), "epoch"),
    (lambda: JointSampler((10, 10), 4, seed=0, ratios="uniform"), "ratios"),
    (lambda: JointSampler((10, 10), 4, seed=0, epoch="fixed"), "fixed_steps"),
    (lambda: JointSampler((10, 10), 4, seed=0, fixed_steps=3), "fixed_steps"),
    (lambda: JointSampler((10, 10), 4, seed=0, temperature=2.0), "temperature"),
    (lambda: JointSampler((10, 10), 4, seed=0, ratios="temperature", temperature=0.0), "temperature"),
    (lambda: JointSampler((2, 2), 12, seed=0), "batch_size"),
    (lambda: AlternatingSampler((10, 10), 4, seed=0).steps(0), "epoch"),
])
def test_bad_inputs_raise_value_error_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_state_for_another_setup_is_refused():
    joint = JointSampler((300, 100), 32, seed=0)
    with pytest.raises(ValueError, match="sizes"):
        JointSampler((300, 101), 32, seed=0).load_state_dict(joint.state_dict())
    with pytest.raises(ValueError, match="shares"):
        JointSampler((300, 100), 16, seed=0).load_state_dict(joint.state_dict())
    with pytest.raises(ValueError, match="joint"):
        AlternatingSampler((300, 100), 32, seed=0).load_state_dict(joint.state_dict())


def test_a_one_image_remainder_joins_the_last_batch_of_an_alternating_pass():
    """BatchNorm in training mode cannot normalise one image: 9 images in batches of 4 are 4 + 5, not 4 + 4 + 1;
    10 images stay 4 + 4 + 2."""
    sampler = AlternatingSampler([9, 10], 4, seed=3)
    assert sampler.steps(1) == 2 and sampler.steps(2) == 3
    first = [sampler.next(1) for _ in range(sampler.steps(1))]
    assert [len(b) for b in first] == [4, 5]
    assert sorted(torch.cat(first).tolist()) == list(range(9))
    second = [sampler.next(2) for _ in range(sampler.steps(2))]
    assert [len(b) for b in second] == [4, 4, 2]
    assert sorted(torch.cat(second).tolist()) == list(range(9, 19))
