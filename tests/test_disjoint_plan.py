"""The batch plan of a disjoint-datasets run (pipeline/disjoint/plan.py): batches per mode, the teacher's refresh
schedule, the soft targets a refresh leaves, the plan's state; and through the fine-tuning loop
(pipeline/training/finetune.py) on the ``demo_halves`` view (pipeline/disjoint/views.py): no masked label reaches a
training step, and an interrupted run resumes bit-identical.

The plan tests use a fake teacher whose logits are a fixed function of the image index and of one parameter of a
stand-in model, so every expected target is computed here from the same formula."""

from __future__ import annotations

import dataclasses
import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.disjoint.distill import distill_targets
from pipeline.disjoint.plan import DisjointPlan
from pipeline.disjoint.sampling import JointSampler
from pipeline.disjoint.teacher import TeacherOutputs, teacher_outputs
from pipeline.disjoint.views import demo_halves
from pipeline.settings import JointSamplingSettings, OptimizerSettings
from pipeline.training.data import LabelledImages
from pipeline.training.evaluate import EvalData
from pipeline.training.finetune import run_finetune
from pipeline.training.step import TrainStep
from tests.conftest import tiny_test_fold
from tests.settings_helpers import CPU, PARAMS, finetune_settings, head, task_set
from tests.settings_helpers import finetune_spec as make_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = ["identity", "expression"]
SIZES = [10, 7]  # source 0 labels identity, source 1 expression
N = sum(SIZES)
N_CLASSES = {"identity": 4, "expression": 3}
BATCH = 4
SEED = 5
JOINT_MIN = JointSamplingSettings(epoch="min", ratios="proportional", temperature=1.0)
#: disjoint.common.transfer of params.yaml: kind none, T = 2, row softmax, identity logits, soft selection
TRANSFER = PARAMS.disjoint.common.transfer


def _transfer(**changes) -> object:
    return dataclasses.replace(TRANSFER, **changes)


def _labels() -> dict[str, torch.Tensor]:
    i = torch.arange(N)
    src0 = i < SIZES[0]
    return {"identity": torch.where(src0, i % 4, -1), "expression": torch.where(src0, -1, i % 3)}


IDS = [f"img{i:02d}" for i in range(N)]


class _Model(nn.Module):
    """A stand-in network: the fake teacher reads its ``shift``."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(float(shift)))


def _fake_logits(idx: torch.Tensor, task: str, shift: float) -> torch.Tensor:
    """``z[i, c] = 3 cos(0.37 (c + 1) i + k_task) + shift · c`` (float32 ``[n, C]``)."""
    i = idx.double().unsqueeze(1)
    c = torch.arange(N_CLASSES[task], dtype=torch.float64).unsqueeze(0)
    k = TASKS.index(task) * 0.5
    return (3.0 * torch.cos(0.37 * (c + 1) * i + k) + shift * c).float()


class _Teacher:
    """A fake :data:`~pipeline.disjoint.plan.TeacherFn` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[str]]] = []

    def __call__(self, model: _Model, idx: torch.Tensor, tasks) -> TeacherOutputs:
        assert idx.dtype == torch.int64
        self.calls.append((idx.tolist(), list(tasks)))
        shift = float(model.shift.detach())
        feats = torch.sin(0.11 * idx.double().unsqueeze(1) * torch.arange(1, 5, dtype=torch.float64)).float()
        return TeacherOutputs(logits={t: _fake_logits(idx, t, shift).numpy() for t in tasks},
                              features={t: feats.numpy() for t in tasks})


def _plan(mode: str = "alternating", *, task: str | None = None, transfer=None, teacher=None, sizes=SIZES,
          source_tasks=TASKS, labels=None, identity_tasks=(), refresh_epochs: int = 1, on_refresh=None,
          joint=JOINT_MIN) -> DisjointPlan:
    n = sum(sizes)
    return DisjointPlan(sizes=sizes, source_tasks=source_tasks, image_ids=[f"img{i:02d}" for i in range(n)],
                        labels=labels if labels is not None else _labels(), n_classes=N_CLASSES,
                        identity_tasks=list(identity_tasks), mode=mode, task=task,
                        transfer=transfer if transfer is not None else _transfer(identity_transfer="none"),
                        joint=joint, epoch_size=3, batch_size=BATCH, refresh_epochs=refresh_epochs, seed=SEED,
                        teacher=teacher if teacher is not None else _Teacher(), on_refresh=on_refresh)


def _epoch(plan: DisjointPlan, epoch: int, model: nn.Module | None = None) -> tuple[dict, list[torch.Tensor]]:
    """``begin_epoch`` then every batch of ``epoch``."""
    scalars = plan.begin_epoch(epoch, model if model is not None else _Model())
    return scalars, [plan.next(epoch) for _ in range(plan.steps(epoch))]


def _range(s: int, sizes=SIZES) -> set[int]:
    start = sum(sizes[:s])
    return set(range(start, start + sizes[s]))


# --- batches ---------------------------------------------------------------------------------------------------------


def test_alternating_epochs_take_one_whole_source_each_in_turn():
    plan = _plan("alternating")
    for epoch, source in [(1, 0), (2, 1), (3, 0), (4, 1)]:
        assert plan.active_source(epoch) == source
        assert plan.steps(epoch) == math.ceil(SIZES[source] / BATCH)  # 3 for source 0, 2 for source 1
        _, batches = _epoch(plan, epoch)
        assert all(b.dtype == torch.int64 for b in batches)
        assert [len(b) for b in batches[:-1]] == [BATCH] * (len(batches) - 1)
        drawn = torch.cat(batches).tolist()
        assert set(drawn) <= _range(source)  # every index lies in the active source
        assert sorted(drawn) == sorted(_range(source))  # one pass: each image once
    # the passes are fresh permutations, not the storage order every time
    again = _plan("alternating")
    orders = [torch.cat(_epoch(again, e)[1]).tolist() for e in (1, 3, 5)]
    assert len({tuple(o) for o in orders}) > 1


def test_alternating_with_a_warmup_runs_joint_epochs_first():
    plan = _plan("alternating", transfer=_transfer(identity_transfer="none", first_refresh="warmup",
                                                   warmup_epochs=2))
    joint_steps = JointSampler(SIZES, BATCH, SEED).steps_per_epoch  # counts (2, 2): min(10 // 2, 7 // 2) = 3
    for epoch in (1, 2):
        assert plan.active_source(epoch) is None
        assert plan.steps(epoch) == joint_steps == 3
        _, batches = _epoch(plan, epoch)
        for b in batches:
            assert len(b) == BATCH
            assert set(b.tolist()) & _range(0) and set(b.tolist()) & _range(1)  # every batch mixes the sources
    for epoch, source in [(3, 0), (4, 1), (5, 0)]:  # the alternation starts after the warm-up, at source 0
        assert plan.active_source(epoch) == source
        assert plan.steps(epoch) == math.ceil(SIZES[source] / BATCH)
        _, batches = _epoch(plan, epoch)
        assert sorted(torch.cat(batches).tolist()) == sorted(_range(source))


def test_single_mode_draws_only_the_sources_of_its_task():
    sizes = [5, 6, 4]
    tasks = ["identity", "expression", "identity"]  # two sources label identity
    labels = {"identity": torch.tensor([0] * 5 + [-1] * 6 + [1] * 4), "expression": torch.tensor([-1] * 5 + [2] * 6
                                                                                                  + [-1] * 4)}
    teacher = _Teacher()
    for task, allowed in [("identity", _range(0, sizes) | _range(2, sizes)), ("expression", _range(1, sizes))]:
        plan = _plan("single", task=task, sizes=sizes, source_tasks=tasks, labels=labels, teacher=teacher,
                     transfer=_transfer(kind="distill"))
        seen: Counter = Counter()
        for epoch in range(1, 7):
            scalars, batches = _epoch(plan, epoch)
            assert scalars == {}  # single-task learning never refreshes
            for b in batches:
                assert set(b.tolist()) <= allowed
                assert plan.targets(b) == {}
                seen.update(b.tolist())
        assert set(seen) == allowed  # every image of the task's sources is drawn
    assert teacher.calls == []
    with pytest.raises(ValueError, match="no source labels task 'age'"):
        _plan("single", task="age")


# --- refresh schedule -----------------------------------------------------------------------------------------------


def _called_epochs(plan: DisjointPlan, teacher: _Teacher, epochs: int) -> list[int]:
    out = []
    for epoch in range(1, epochs + 1):
        before = len(teacher.calls)
        _epoch(plan, epoch)
        if len(teacher.calls) > before:
            out.append(epoch)
    return out


def test_alternating_refreshes_the_active_source_every_epoch():
    teacher = _Teacher()
    plan = _plan("alternating", transfer=_transfer(kind="distill", identity_transfer="none"), teacher=teacher)
    for epoch, source, other in [(1, 0, "expression"), (2, 1, "identity"), (3, 0, "expression")]:
        teacher.calls.clear()
        scalars, _ = _epoch(plan, epoch)
        # one teacher pass: the active source's images, for the task it does not label
        assert teacher.calls == [(sorted(_range(source)), [other])]
        assert scalars[f"coverage_{other}"] == 1.0
        assert plan.last_refresh == epoch


@pytest.mark.parametrize(("warmup", "r", "expected"), [(0, 3, [1, 4, 7]), (0, 1, [1, 2, 3, 4, 5, 6, 7]),
                                                        (2, 2, [3, 5, 7])])
def test_joint_refreshes_every_refresh_epochs_from_the_first_epoch_after_the_warmup(warmup, r, expected):
    teacher = _Teacher()
    transfer = _transfer(kind="distill", identity_transfer="none",
                         first_refresh="warmup" if warmup else "untrained", warmup_epochs=warmup)
    plan = _plan("joint", transfer=transfer, teacher=teacher, refresh_epochs=r)
    assert _called_epochs(plan, teacher, 7) == expected
    # each refresh: one pass per task, over the sources that do not label it
    assert teacher.calls[:2] == [(sorted(_range(1)), ["identity"]), (sorted(_range(0)), ["expression"])]
    assert len(teacher.calls) == 2 * len(expected)


def test_alternating_with_a_warmup_refreshes_from_the_first_alternating_epoch():
    teacher = _Teacher()
    plan = _plan("alternating", teacher=teacher,
                 transfer=_transfer(kind="distill", identity_transfer="none", first_refresh="warmup",
                                    warmup_epochs=2))
    assert _called_epochs(plan, teacher, 5) == [3, 4, 5]
    assert teacher.calls[0] == (sorted(_range(0)), ["expression"])


@pytest.mark.parametrize("mode", ["alternating", "joint"])
def test_no_transfer_never_calls_the_teacher(mode):
    teacher = _Teacher()
    plan = _plan(mode, transfer=_transfer(kind="none", identity_transfer="none"), teacher=teacher)
    for epoch in range(1, 5):
        scalars, batches = _epoch(plan, epoch)
        assert scalars == {}
        assert all(plan.targets(b) == {} for b in batches)
    assert teacher.calls == []
    assert plan.last_refresh == 0
    # identity_transfer logits alone still refreshes: the identity task, nothing else
    plan = _plan(mode, transfer=_transfer(kind="none", identity_transfer="logits"), teacher=teacher,
                 identity_tasks=["identity"])
    _epoch(plan, 1)
    _epoch(plan, 2)
    assert teacher.calls and all(tasks == ["identity"] for _, tasks in teacher.calls)
    assert set(plan.targets_of) == {"identity"}


# --- targets ---------------------------------------------------------------------------------------------------------


def _all_targets(plan: DisjointPlan) -> dict[str, torch.Tensor]:
    return plan.targets(torch.arange(N))


def test_row_distillation_targets_are_the_teachers_softened_rows_and_none_for_labelled_images():
    teacher = _Teacher()
    plan = _plan("joint", transfer=_transfer(kind="distill", softmax="row", temperature=2.0,
                                             identity_transfer="none"), teacher=teacher)
    model = _Model(shift=0.25)
    plan.begin_epoch(1, model)
    t = _all_targets(plan)
    assert set(t) == {"identity", "expression"}
    labels = _labels()
    for task in TASKS:
        q = t[task]
        assert q.shape == (N, N_CLASSES[task]) and q.dtype == torch.float32
        own = labels[task] >= 0  # images whose source labels the task: no target
        assert torch.equal(q[own], torch.zeros_like(q[own]))
        rows = torch.nonzero(~own).flatten()
        torch.testing.assert_close(q[rows].sum(dim=1), torch.ones(len(rows)))
        torch.testing.assert_close(q[rows], torch.softmax(_fake_logits(rows, task, 0.25) / 2.0, dim=1))
    # a batch's targets are the rows of its images
    idx = torch.tensor([3, 12, 0, 16])
    for task, q in plan.targets(idx).items():
        assert torch.equal(q, t[task][idx])


def test_matrix_distillation_spreads_one_unit_of_mass_over_the_refreshed_rows():
    plan = _plan("alternating", transfer=_transfer(kind="distill", softmax="matrix", temperature=2.0,
                                                   identity_transfer="none"))
    scalars, _ = _epoch(plan, 1, _Model(0.5))  # source 0 (10 images) gets expression targets
    q = plan.targets_of["expression"]
    rows = sorted(_range(0))
    z = _fake_logits(torch.tensor(rows), "expression", 0.5)
    torch.testing.assert_close(q[rows], distill_targets(z, 2.0, "matrix"))
    assert float(q[rows].sum()) == pytest.approx(1.0, rel=1e-5)  # the whole matrix sums to 1 ...
    assert float(q[rows].sum(dim=1).mean()) == pytest.approx(1 / SIZES[0], rel=1e-5)  # ... a row ~1/N
    # each row still has the shape of the row softmax
    torch.testing.assert_close(q[rows] / q[rows].sum(dim=1, keepdim=True), torch.softmax(z / 2.0, dim=1))
    assert scalars["weight_expression"] == pytest.approx(1 / SIZES[0], rel=1e-5)
    assert scalars["coverage_expression"] == 1.0


def _expected_hard(z: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """The hard selection written out: confidence of softmax(z) (T = 1), divided by its maximum; selected above the
    element int(q · n) of the sorted weights; target w · onehot(argmax)."""
    p = torch.softmax(z.double(), dim=1).numpy()
    pseudo = p.argmax(axis=1)
    conf = p.max(axis=1)
    w = conf / conf.max()
    thr = np.sort(w)[int(quantile * len(w))]
    selected = w > thr
    target = np.zeros_like(p)
    target[np.arange(len(w)), pseudo] = np.where(selected, w, 0.0)
    return torch.from_numpy(target).float(), torch.from_numpy(w), torch.from_numpy(selected), pseudo


def test_pseudo_hard_selection_keeps_weighted_one_hots_of_the_selected_rows_and_records_them():
    got: list[tuple[int, dict]] = []

    def on_refresh(epoch, records):
        got.append((epoch, records))
        return {"precision_expression": 0.75}

    transfer = _transfer(kind="pseudo", weights=["confidence"], selection="hard", quantile=0.3,
                         identity_transfer="logits", temperature=2.0)
    plan = _plan("joint", transfer=transfer, identity_tasks=["identity"], on_refresh=on_refresh)
    scalars = plan.begin_epoch(1, _Model(0.1))
    rows = torch.tensor(sorted(_range(0)))  # the identity half: expression pseudo labels
    target, w, selected, pseudo = _expected_hard(_fake_logits(rows, "expression", 0.1), 0.3)
    assert 0 < int(selected.sum()) < len(rows)
    q = plan.targets_of["expression"]
    torch.testing.assert_close(q[rows], target)
    assert torch.equal((q[rows] != 0).any(dim=1), selected)  # only the selected rows carry a target
    assert torch.equal(q[sorted(_range(1))], torch.zeros(SIZES[1], 3))
    # the identity task gets distilled logits, never pseudo labels
    id_rows = torch.tensor(sorted(_range(1)))
    torch.testing.assert_close(plan.targets_of["identity"][id_rows],
                               torch.softmax(_fake_logits(id_rows, "identity", 0.1) / 2.0, dim=1))
    # the refresh record: one table, of the pseudo-labelled task
    assert [e for e, _ in got] == [1] and set(got[0][1]) == {"expression"}
    table = got[0][1]["expression"]
    assert list(table.columns) == ["image_id", "task", "pseudo", "confidence", "weight", "selected"]
    assert table["image_id"].tolist() == [IDS[i] for i in rows.tolist()]
    assert (table["task"] == "expression").all()
    assert table["pseudo"].tolist() == pseudo.tolist()
    np.testing.assert_allclose(table["weight"].to_numpy(), w.numpy(), rtol=1e-6)
    np.testing.assert_allclose(table["confidence"].to_numpy(),
                               torch.softmax(_fake_logits(rows, "expression", 0.1).double(), 1).max(1).values.numpy(),
                               rtol=1e-6)
    assert table["selected"].tolist() == selected.tolist()
    # the scalars: coverage and mean selected weight per task, and what on_refresh returned
    assert scalars["coverage_expression"] == pytest.approx(float(selected.double().mean()))
    assert scalars["weight_expression"] == pytest.approx(float(w[selected].mean()), rel=1e-6)
    assert scalars["coverage_identity"] == 1.0 and scalars["weight_identity"] == pytest.approx(1.0)
    assert scalars["precision_expression"] == 0.75


def test_pseudo_soft_selection_mixes_the_one_hot_with_the_distilled_row():
    transfer = _transfer(kind="pseudo", weights=["confidence"], selection="soft", identity_transfer="none",
                         temperature=2.0)
    plan = _plan("alternating", transfer=transfer, identity_tasks=["identity"])
    plan.begin_epoch(1, _Model(0.0))
    rows = torch.tensor(sorted(_range(0)))
    z = _fake_logits(rows, "expression", 0.0)
    _, w, _, pseudo = _expected_hard(z, 0.0)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(pseudo), 3).double()
    expected = w.unsqueeze(1) * onehot + (1 - w).unsqueeze(1) * torch.softmax(z.double() / 2.0, dim=1)
    torch.testing.assert_close(plan.targets_of["expression"][rows], expected.float())


def test_identity_transfer_none_leaves_the_identity_task_without_targets():
    teacher = _Teacher()
    transfer = _transfer(kind="pseudo", weights=["confidence"], selection="hard", identity_transfer="none")
    plan = _plan("joint", transfer=transfer, identity_tasks=["identity"], teacher=teacher)
    plan.begin_epoch(1, _Model())
    assert set(plan.targets(torch.arange(N))) == {"expression"}
    assert all(tasks == ["expression"] for _, tasks in teacher.calls)


def test_the_refresh_uses_the_model_as_it_is_and_other_sources_keep_their_last_targets():
    plan = _plan("alternating", transfer=_transfer(kind="distill", identity_transfer="none"))
    plan.begin_epoch(1, _Model(0.0))  # source 0: expression targets from shift 0
    first = plan.targets_of["expression"].clone()
    plan.begin_epoch(2, _Model(1.0))  # source 1: identity targets from shift 1; source 0's stay
    assert torch.equal(plan.targets_of["expression"], first)
    rows = torch.tensor(sorted(_range(1)))
    torch.testing.assert_close(plan.targets_of["identity"][rows],
                               torch.softmax(_fake_logits(rows, "identity", 1.0) / 2.0, dim=1))
    plan.begin_epoch(3, _Model(1.0))  # source 0 again, now from shift 1
    assert not torch.equal(plan.targets_of["expression"], first)


# --- state -----------------------------------------------------------------------------------------------------------


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _continue(plan: DisjointPlan, epochs: range) -> list:
    """Per epoch: the scalars, then each batch with its targets (the model changes every epoch, as training would)."""
    out = []
    for epoch in epochs:
        scalars, batches = _epoch(plan, epoch, _Model(0.3 * epoch))
        out.append((scalars, [(b, plan.targets(b)) for b in batches]))
    return out


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (sa, ba), (sb, bb) in zip(a, b, strict=True):
        if sa != sb or len(ba) != len(bb):
            return False
        for (ia, ta), (ib, tb) in zip(ba, bb, strict=True):
            if not torch.equal(ia, ib) or ta.keys() != tb.keys():
                return False
            if not all(torch.equal(ta[k], tb[k]) for k in ta):
                return False
    return True


@pytest.mark.parametrize(("mode", "refresh_epochs", "kind"), [("joint", 2, "pseudo"), ("alternating", 1, "distill")])
def test_state_dict_resumes_with_the_same_batches_and_targets(mode, refresh_epochs, kind):
    transfer = _transfer(kind=kind, weights=["confidence"], selection="soft", identity_transfer="logits")

    def make():
        return _plan(mode, transfer=transfer, identity_tasks=["identity"], refresh_epochs=refresh_epochs)

    def rest(plan: DisjointPlan) -> list:
        """The rest of epoch 3 (its refresh already ran), then epochs 4 to 6."""
        batches = [plan.next(3) for _ in range(plan.steps(3) - 1)]
        return [({}, [(b, plan.targets(b)) for b in batches]), *_continue(plan, range(4, 7))]

    whole = make()
    _continue(whole, range(1, 3))
    whole.begin_epoch(3, _Model(0.9))
    whole.next(3)  # mid-epoch: the sampler's position is part of the state
    state = _roundtrip(whole.state_dict())
    expected = rest(whole)
    resumed = make()
    resumed.load_state_dict(state)
    assert _same(rest(resumed), expected)
    assert resumed.last_refresh == whole.last_refresh
    assert resumed.targets_of.keys() == whole.targets_of.keys()
    assert all(torch.equal(resumed.targets_of[k], whole.targets_of[k]) for k in whole.targets_of)
    # without the state the continuation differs (the comparison is not vacuous)
    assert not _same(rest(make()), expected)


# --- through the fine-tuning loop ------------------------------------------------------------------------------------

SIZE, CROP, INPUT = 88, 80, 80  # stored faces, crop, model input (as tests/test_training_loop.py)
N_IDS, N_EXPR = 4, 3
#: 16 training images of 4 subjects (3, 3, 4 and 6 images), interleaved in storage order; demo_halves puts s2 and s3
#: (10 images) in the identity half and s0 and s1 (6 images) in the expression half. (No alternating batch of one
#: image: the network's BatchNorm cannot train on one value per channel.)
SUBJECTS = ["s2", "s3", "s0", "s3", "s1", "s2", "s3", "s0", "s2", "s1", "s3", "s2", "s0", "s1", "s3", "s3"]
RUN_TASKS = task_set(**{"tasks.expression.head": head(16)})  # fr_fer with a hidden expression layer (its features)
RMSPROP = OptimizerSettings(name="rmsprop_tf1", momentum=0.9, rms_decay=0.9, rms_eps=1.0, weight_decay=0.0,
                            clip_norm=5.0)


def _fold() -> tuple[LabelledImages, dict[str, str], EvalData]:
    g = torch.Generator().manual_seed(0)
    n = len(SUBJECTS)
    expression = torch.arange(n) % N_EXPR
    expression[1] = -1  # an identity-half image without an expression label: no hidden row for it
    train = LabelledImages(
        images=torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
        labels={"identity": torch.tensor([int(s[1]) for s in SUBJECTS]), "expression": expression},
        image_ids=[f"train/{i:02d}" for i in range(n)])
    subject_of = dict(zip(train.image_ids, SUBJECTS, strict=True))
    test = tiny_test_fold(g, SIZE)
    return train, subject_of, test


FOLD, SUBJECT_OF, TEST = _fold()
VIEW = demo_halves(FOLD, SUBJECT_OF, TASKS)


def _run_spec(epochs: int = 3):
    """Batches of 4, epoch_size 1 (the plan decides the steps: 3 and 2 per alternating epoch)."""
    settings = finetune_settings(**{
        "init": "random", "network.input_size": INPUT, "network.keep_prob": 0.5, "crop.size": CROP,
        "optimizer": RMSPROP, "schedule.lr": 0.01, "schedule.boundaries": [], "epochs": epochs, "batch_size": BATCH,
        "epoch_size": 1, "protocol.n_folds": 2, "precision.amp": False, "precision.channels_last": False,
        "seed": 123})
    return make_spec(settings, RUN_TASKS, weighting="static", options={"weights": [1.0, 1.0]},
                     n_classes={"identity": N_IDS, "expression": N_EXPR}, runtime=dataclasses.replace(CPU,
                                                                                                   eval_batch_size=8))


class _RecordingPlan(DisjointPlan):
    """A :class:`DisjointPlan` that keeps the indices of every batch it hands out."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.drawn: list[torch.Tensor] = []

    def next(self, epoch: int) -> torch.Tensor:
        idx = super().next(epoch)
        self.drawn.append(idx.clone())
        return idx


def _factory(mode: str, transfer, plans: list, refreshes: list):
    """``model -> DisjointPlan`` over ``VIEW`` (the stage's wiring: teacher_outputs on the view's images)."""
    s = _run_spec().settings
    images = VIEW.train.images

    def teacher(model, idx, tasks):
        return teacher_outputs(model, images.index_select(0, idx), tasks, crop=s.crop.size,
                               input_size=s.network.input_size, batch_size=8)

    def on_refresh(epoch, records):
        refreshes.append((epoch, {t: r.copy() for t, r in records.items()}))
        return {"tables": float(len(records))}

    def make(model):
        plan = _RecordingPlan(sizes=VIEW.sizes, source_tasks=VIEW.source_tasks, image_ids=VIEW.train.image_ids,
                              labels=VIEW.train.labels, n_classes={"identity": N_IDS, "expression": N_EXPR},
                              identity_tasks=["identity"], mode=mode, task=None, transfer=transfer, joint=JOINT_MIN,
                              epoch_size=s.epoch_size, batch_size=s.batch_size, refresh_epochs=1, seed=s.seed,
                              teacher=teacher, on_refresh=on_refresh)
        plans.append(plan)
        return plan

    return make


class _StepRecorder:
    """Wraps :meth:`TrainStep.__call__` to keep the labels and targets every training step receives."""

    def __init__(self) -> None:
        self.steps: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        original = TrainStep.__call__
        steps = self.steps

        def call(step, x, labels, targets=None):
            steps.append(({k: v.clone() for k, v in labels.items()},
                          {k: v.clone() for k, v in (targets or {}).items()}))
            return original(step, x, labels, targets) if targets else original(step, x, labels)

        mp.setattr(TrainStep, "__call__", call)


#: SA-MTL's hard selection on the confidence weights, distilled identity logits
PSEUDO_HARD = _transfer(kind="pseudo", weights=["confidence"], selection="hard", quantile=0.3,
                        identity_transfer="logits")


def _recorded_run(tmp_path_factory, mode: str, transfer, epochs: int) -> dict:
    work = tmp_path_factory.mktemp(f"disjoint-{mode}") / "work"
    plans, refreshes, rec = [], [], _StepRecorder()
    with pytest.MonkeyPatch.context() as mp:
        rec.install(mp)
        result = run_finetune(_run_spec(epochs), VIEW.train, TEST, work,
                              plan=_factory(mode, transfer, plans, refreshes))
    return {"result": result, "plan": plans[0], "steps": rec.steps, "refreshes": refreshes, "work": work}


@pytest.fixture(scope="module")
def alternating_run(tmp_path_factory):
    """An uninterrupted 3-epoch alternating run with pseudo labels (hard selection)."""
    return _recorded_run(tmp_path_factory, "alternating", PSEUDO_HARD, 3)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """A 2-epoch joint run (every batch mixes both halves) with interpolated pseudo labels."""
    return _recorded_run(tmp_path_factory, "joint", _transfer(kind="pseudo", weights=["confidence"],
                                                              selection="soft", identity_transfer="logits"), 2)


def test_demo_halves_masks_the_other_tasks_labels_into_hidden():
    assert VIEW.sizes == [10, 6] and VIEW.source_tasks == TASKS
    assert [sorted(s) for s in VIEW.subjects] == [["s2", "s3"], ["s0", "s1"]]
    original = {i: {t: int(FOLD.labels[t][k]) for t in TASKS} for k, i in enumerate(FOLD.image_ids)}
    expected_hidden = set()
    for k, image_id in enumerate(VIEW.train.image_ids):
        source = 0 if k < VIEW.sizes[0] else 1
        kept, masked = TASKS[source], TASKS[1 - source]
        assert SUBJECT_OF[image_id] in VIEW.subjects[source]
        assert int(VIEW.train.labels[kept][k]) == original[image_id][kept]
        assert int(VIEW.train.labels[masked][k]) == -1
        assert torch.equal(VIEW.train.images[k], FOLD.images[FOLD.image_ids.index(image_id)])
        if original[image_id][masked] >= 0:
            expected_hidden.add((image_id, masked, original[image_id][masked]))
    assert list(VIEW.hidden.columns) == ["image_id", "task", "label"]
    got = set(zip(VIEW.hidden["image_id"], VIEW.hidden["task"], VIEW.hidden["label"].astype(int), strict=True))
    assert got == expected_hidden and len(VIEW.hidden) == len(expected_hidden) == 15  # image 1 had no expression


@pytest.mark.parametrize("run", ["alternating_run", "joint_run"])
def test_no_hidden_label_reaches_a_training_step(run, request):
    r = request.getfixturevalue(run)
    plan, steps = r["plan"], r["steps"]
    assert len(steps) == len(plan.drawn) == len(r["result"].rows) > 0
    halves = {0: set(), 1: set()}
    hidden = {(i, t) for i, t in zip(VIEW.hidden["image_id"], VIEW.hidden["task"], strict=True)}
    for idx, (labels, targets) in zip(plan.drawn, steps, strict=True):
        source = (idx >= VIEW.sizes[0]).long()
        # the expression half has no identity label, the identity half no expression label, in every batch
        assert torch.all(labels["identity"][source == 1] == -1)
        assert torch.all(labels["expression"][source == 0] == -1)
        assert torch.all(labels["identity"][source == 0] >= 0)
        for k, i in enumerate(idx.tolist()):
            halves[int(source[k])].add(i)
            for t in TASKS:
                if (VIEW.train.image_ids[i], t) in hidden:
                    assert int(labels[t][k]) == -1
            for t, q in targets.items():  # a labelled image trains on its label: its target row is empty
                if int(labels[t][k]) >= 0:
                    assert not torch.any(q[k])
    assert halves[0] and halves[1]  # both halves were trained on
    assert any(targets for _, targets in steps)  # the pseudo labels and distilled logits did reach the steps
    if run == "joint_run":
        assert all(set(idx.tolist()) & set(range(VIEW.sizes[0])) and set(idx.tolist()) - set(range(VIEW.sizes[0]))
                   for idx in plan.drawn)


def test_the_loop_runs_the_plans_epochs_and_logs_its_refreshes(alternating_run):
    result, refreshes = alternating_run["result"], alternating_run["refreshes"]
    assert [r["epoch"] for r in result.rows] == [1, 1, 1, 2, 2, 3, 3, 3]  # ceil(10 / 4), ceil(6 / 4), ceil(10 / 4)
    assert [r["step"] for r in result.rows] == list(range(1, 9))
    assert [e for e, _ in refreshes] == [1, 2, 3]
    for (epoch, records), entry in zip(refreshes, result.history, strict=True):
        task = "expression" if epoch % 2 else None  # the identity half gets expression pseudo labels
        assert set(records) == ({task} if task else set())
        assert entry["plan"]["tables"] == float(len(records))
        if task:
            assert len(records[task]) == VIEW.sizes[0] and 0 < entry["plan"]["coverage_expression"] < 1
        else:
            assert entry["plan"]["coverage_identity"] == 1.0  # distilled identity logits on the expression half


class _Interrupt(Exception):
    pass


def test_an_interrupted_disjoint_run_resumes_identical_to_an_uninterrupted_one(alternating_run, tmp_path):
    work = tmp_path / "work"
    refreshes: list = []

    def stop(epoch, rows, entry):
        if epoch == 1:
            raise _Interrupt  # after epoch 1's checkpoint

    with pytest.raises(_Interrupt):
        run_finetune(_run_spec(), VIEW.train, TEST, work, on_epoch=stop,
                     plan=_factory("alternating", PSEUDO_HARD, [], refreshes))
    assert torch.load(work / "state.pt", weights_only=False)["epoch"] == 1
    resumed = run_finetune(_run_spec(), VIEW.train, TEST, work,
                           plan=_factory("alternating", PSEUDO_HARD, [], refreshes))
    whole = alternating_run["result"]
    assert resumed.resumed_from == 1
    assert resumed.rows == whole.rows
    assert resumed.history == whole.history
    a, b = resumed.model.state_dict(), whole.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the refreshes after the resume label the same images with the same pseudo labels, weights and selection
    assert [e for e, _ in refreshes] == [1, 2, 3]
    for (e1, got), (e2, want) in zip(refreshes, alternating_run["refreshes"], strict=True):
        assert e1 == e2 and got.keys() == want.keys()
        for t in got:
            assert got[t].equals(want[t])
