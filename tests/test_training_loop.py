"""The fine-tuning loop on tiny synthetic data: determinism, resume, step rows, LR schedule, non-finite stop,
model selection; the permutation stream, per-image standardisation and schedule files it relies on."""

from __future__ import annotations

import math
import shutil
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from pipeline.losses.center import CenterLoss
from pipeline.models.network import MultiTaskInceptionResNetV1
from pipeline.settings import OptimizerSettings, TaskCenter
from pipeline.training.build import FinetuneSpec
from pipeline.training.data import LabelledImages, PermutationStream, preprocess, standardize
from pipeline.training.evaluate import EvalData, criteria
from pipeline.training.finetune import _Selector, run_finetune, step_columns
from pipeline.training.optim import build_optimizer
from pipeline.training.schedule import LrSchedule, read_schedule
from pipeline.training.step import NonFiniteError, TrainStep
from pipeline.weighting import build_weighting
from tests.conftest import REPO, tiny_test_fold
from tests.settings_helpers import CPU, finetune_settings, head, model_config, task_set
from tests.settings_helpers import finetune_spec as make_spec

TASKS = ["identity", "expression"]
N_IDS, N_EXPR = 4, 3
SIZE, CROP, INPUT = 88, 80, 80  # stored faces, crop, model input (no resize: cheaper)
#: the FR+FER task set with a small ReLU'd expression head (the original's)
TASK_SET = task_set(**{"tasks.identity.center": TaskCenter(factor=0.1, alpha=0.5, embedding="own", matrix="own",
                                                           updates=True),
                       "tasks.expression.head": head(16, relu_logits=True)})
CRITERIA = list(criteria(TASK_SET))
KEY = criteria(TASK_SET)
RMSPROP = OptimizerSettings(name="rmsprop_tf1", momentum=0.9, rms_decay=0.9, rms_eps=1.0, weight_decay=0.0,
                            clip_norm=5.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data() -> tuple[LabelledImages, EvalData]:
    g = torch.Generator().manual_seed(0)
    n = 12
    train = LabelledImages(
        images=torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
        labels={"identity": torch.arange(n) % N_IDS, "expression": torch.tensor([0, 1, 2, -1] * 3)},
        image_ids=[f"train/{i}" for i in range(n)])
    test = tiny_test_fold(g, SIZE)
    return train, test


TRAIN, TEST = _data()


def _spec(weighting: str = "dynamic", options: dict | None = None, compile: bool = False, **changes) -> FinetuneSpec:
    """A 3-epoch run of one 4-image step per epoch; the rate 0.01, halved from epoch 2 and again from epoch 3."""
    settings = finetune_settings(**{
        "init": "random", "network.input_size": INPUT, "network.keep_prob": 0.5, "crop.size": CROP,
        "optimizer": RMSPROP, "weights_optimizer": RMSPROP, "schedule.lr": 0.01, "schedule.boundaries": [2, 3],
        "schedule.decay": 0.5, "epochs": 3, "batch_size": 4, "epoch_size": 1, "protocol.n_folds": 2,
        "precision.amp": False, "precision.channels_last": False, "seed": 123, **changes})
    return make_spec(settings, TASK_SET, weighting=weighting,
                     options={"lr_weights": 0.1} if options is None else options,
                     n_classes={"identity": N_IDS, "expression": N_EXPR},
                     runtime=replace(CPU, eval_batch_size=8, compile=compile))


def _with_schedule(spec: FinetuneSpec, schedule: LrSchedule) -> FinetuneSpec:
    """``spec`` with a learning-rate schedule the settings cannot express (a rate that explodes the weights)."""

    class Scheduled(FinetuneSpec):
        @property
        def schedule(self) -> LrSchedule:
            return schedule

    return Scheduled(**{f.name: getattr(spec, f.name) for f in fields(spec)})


class _Recorder:
    """Wraps :meth:`TrainStep.__call__` to record the learning rates the optimisers actually hold at each step."""

    def __init__(self) -> None:
        self.lrs: list[tuple[float, float | None]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        original = TrainStep.__call__
        lrs = self.lrs

        def call(step: TrainStep, x, labels):
            own = step.own_optimizer.param_groups[0]["lr"] if step.own_optimizer is not None else None
            lrs.append((step.optimizer.param_groups[0]["lr"], own))
            return original(step, x, labels)

        mp.setattr(TrainStep, "__call__", call)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch dynamic run, with the optimisers' learning rates and the callbacks recorded."""
    work = tmp_path_factory.mktemp("reference") / "work"
    rec = _Recorder()
    epochs_seen: list[tuple[int, int, dict]] = []
    progress: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        rec.install(mp)
        result = run_finetune(_spec(), TRAIN, TEST, work,
                              on_epoch=lambda e, rows, entry: epochs_seen.append((e, len(rows), entry)),
                              progress=progress.append)
    return {"result": result, "work": work, "lrs": rec.lrs, "epochs": epochs_seen, "progress": progress}


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_run(a, b) -> None:
    assert a.rows == b.rows
    assert a.history == b.history
    assert a.metrics == b.metrics
    assert a.scores.keys() == b.scores.keys()
    assert all(np.array_equal(a.scores[k], b.scores[k]) for k in a.scores)
    assert _params_equal(a.model, b.model)


# --- the loop -------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_runs(reference, tmp_path):
    again = run_finetune(_spec(), TRAIN, TEST, tmp_path / "work")
    assert again.resumed_from == 0
    _same_run(reference["result"], again)
    rows = reference["result"].rows
    assert len({r["weight_identity"] for r in rows}) > 1  # weights move: the comparison is not of constants


def test_compile_runs_the_training_forward_through_torch_compile_and_changes_no_number(reference, tmp_path,
                                                                                     monkeypatch):
    """``finetune.compile``: the step's forward goes through ``torch.compile(model)``, training the model's own
    parameters, while evaluation calls the model itself; the run equals the uncompiled one exactly. The backend
    is AOTAutograd without inductor (``aot_eager``: forward and backward graphs traced as in a real compile,
    without inductor's minute of C++ code generation on a CPU)."""
    from torch._dynamo import lookup_backend

    compiled, captured_in_training = [], []

    def backend(gm, example_inputs):
        captured_in_training.append(compiled[0].training)
        return lookup_backend("aot_eager")(gm, example_inputs)

    real_compile = torch.compile

    def compile_spy(model, **kw):
        compiled.append(model)
        return real_compile(model, backend=backend, **kw)

    monkeypatch.setattr(torch, "compile", compile_spy)
    torch._dynamo.reset()
    result = run_finetune(_spec(compile=True), TRAIN, TEST, tmp_path / "w")
    assert len(compiled) == 1 and isinstance(compiled[0], MultiTaskInceptionResNetV1)
    # graphs were captured, all from training-mode calls: the per-epoch evaluation (eval mode) never went through
    # the compiled wrapper
    assert captured_in_training and all(captured_in_training)
    _same_run(reference["result"], result)


def test_resume_after_an_epoch_ends_identical_to_an_uninterrupted_run(reference, tmp_path):
    work = tmp_path / "work"
    first = run_finetune(_spec(epochs=1), TRAIN, TEST, work)
    assert first.resumed_from == 0 and len(first.rows) == 1 and (work / "state.pt").is_file()
    resumed = run_finetune(_spec(), TRAIN, TEST, work)
    assert resumed.resumed_from == 1
    _same_run(reference["result"], resumed)
    assert torch.load(work / "state.pt", weights_only=False)["epoch"] == 3


def test_resume_restores_epoch_level_strategy_state(tmp_path):
    """DWA's weights at epoch 3 come from the losses of epochs 1 and 2 (its extra state)."""
    spec = _spec(weighting="dwa", options={"temperature": 2.0})
    whole = run_finetune(spec, TRAIN, TEST, tmp_path / "whole")
    w3 = [whole.rows[2][f"weight_{t}"] for t in TASKS]
    assert w3 != [1.0, 1.0] and sum(w3) == pytest.approx(2.0, rel=1e-5)  # DWA weights sum to T once it starts
    run_finetune(_spec(weighting="dwa", options={"temperature": 2.0}, epochs=2), TRAIN, TEST, tmp_path / "cut")
    resumed = run_finetune(spec, TRAIN, TEST, tmp_path / "cut")
    assert resumed.resumed_from == 2
    _same_run(whole, resumed)


def test_step_rows_hold_every_task_loss_and_weight_and_the_scheduled_lr(reference):
    ref = reference["result"]
    rows = ref.rows
    assert len(rows) == 3  # epochs × epoch_size
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    cols = step_columns(TASKS)
    schedule = _spec().schedule
    for r in rows:
        assert set(cols) <= set(r), set(cols) - set(r)
        assert r["lr"] == schedule.at(r["epoch"])
        assert r["present_identity"] == r["present_expression"] == 1  # every batch labels both tasks
        assert r["lr_weights"] == 0.1  # the fer unit's constant rate
        losses = [r[f"loss_{t}"] for t in TASKS]
        weights = [r[f"weight_{t}"] for t in TASKS]
        assert all(math.isfinite(v) and v > 0 for v in losses)
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)  # batch mean of a softmax
        assert r["total_loss"] == pytest.approx(sum(w * v for w, v in zip(weights, losses, strict=True)), rel=1e-5)
        assert r["weight_loss"] == pytest.approx(sum(w / (v + 0.01) for w, v in zip(weights, losses, strict=True)),
                                                 rel=1e-5)
        assert r["grad_norm"] > 0 and r["grad_norm_weights"] > 0
    # the optimisers really held those rates (1-based epochs: 0.01, then 0.005 from epoch 2, 0.0025 from epoch 3)
    assert reference["lrs"] == [(0.01, 0.1), (0.005, 0.1), (0.0025, 0.1)]
    # callbacks: one per epoch with its rows; progress per step in images
    assert [(e, n) for e, n, _ in reference["epochs"]] == [(1, 1), (2, 1), (3, 1)]
    assert [entry for _, _, entry in reference["epochs"]] == ref.history
    assert reference["progress"] == [4] * 3


def test_history_and_metrics_of_a_run(reference):
    ref = reference["result"]
    assert [h["epoch"] for h in ref.history] == [1, 2, 3]
    for h in ref.history:
        t = h["test"]
        assert h["val"] is None
        assert 0 <= t["verification_accuracy"] <= 1 and 0 <= t["expression_accuracy"] <= 1
        assert t["authentication"] == pytest.approx(t["verification_accuracy"] * t["expression_accuracy"])
        assert np.array(t["expression"]["confusion"]).shape == (N_EXPR, N_EXPR)
        assert np.array(t["expression"]["confusion"]).sum() == 7  # the labelled test images
        assert t["expression"]["class_names"] == ["a", "b", "c"]
    assert ref.metrics["last"] == {"epoch": 3, **ref.history[-1]["test"]}
    assert ref.metrics["epochs"] == 3
    # scores: 8 pairs, 8 test images × 3 expression logits, at the last and each criterion's best epoch
    assert ref.scores["last_distances"].shape == (8,) and ref.scores["last_same"].dtype == bool
    assert ref.scores["last_expression_logits"].shape == (8, N_EXPR)
    for crit in CRITERIA:
        assert f"best_{crit}_distances" in ref.scores
    assert np.all(ref.scores["last_expression_logits"] >= 0)  # the relu_logits head


def test_test_fold_selection_takes_the_argmax_epoch_of_each_criterion(reference):
    ref = reference["result"]
    best = ref.metrics["best"]
    assert best["selected_on"] == "test_fold"
    for crit in CRITERIA:
        values = [h["test"][KEY[crit]] for h in ref.history]
        epoch = int(np.argmax(values)) + 1  # the first epoch reaching the maximum
        assert best[crit] == {"epoch": epoch, **ref.history[epoch - 1]["test"]}, crit
        if epoch == 3:
            assert np.array_equal(ref.scores[f"best_{crit}_distances"], ref.scores["last_distances"])


def test_last_selection_reports_the_last_epoch_for_every_criterion(reference, tmp_path):
    ref = reference["result"]
    last = run_finetune(_spec(selection="last", epochs=2), TRAIN, TEST, tmp_path / "work")
    assert last.history == ref.history[:2]  # selection does not change training; epochs only cut the run
    assert last.rows == ref.rows[:2]
    assert last.metrics["best"]["selected_on"] == "last"
    for crit in CRITERIA:
        assert last.metrics["best"][crit] == {"epoch": 2, **last.history[1]["test"]}
        assert np.array_equal(last.scores[f"best_{crit}_expression_logits"], last.scores["last_expression_logits"])


def test_selector_semantics():
    def m(v, e):
        return {"verification_accuracy": v, "expression_accuracy": e, "authentication": v * e}

    epochs = [m(0.6, 0.5), m(0.8, 0.4), m(0.8, 0.45), m(0.7, 0.3)]
    best = _Selector("test_fold", KEY)
    for i, x in enumerate(epochs, start=1):
        best.update(i, x, {"tag": i})
    assert {c: best.best[c]["epoch"] for c in CRITERIA} == {"verification": 2, "expression": 1, "authentication": 3}
    assert best.best["verification"]["metrics"] == {"tag": 2}  # ties keep the earlier epoch
    last = _Selector("last", KEY)
    for i, x in enumerate(epochs, start=1):
        last.update(i, x, {"tag": i})
    assert all(last.best[c]["epoch"] == 4 for c in CRITERIA)


def test_val_subjects_selection_needs_validation_data(tmp_path):
    with pytest.raises(ValueError, match="val"):
        run_finetune(_spec(selection="val_subjects"), TRAIN, TEST, tmp_path / "work")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    good = (work / "state.pt").read_bytes()
    blow_up = LrSchedule(((0, 0.01), (4, 1e30)), source="blow-up")  # epoch 4's first step explodes the weights
    with pytest.raises(NonFiniteError, match="non-finite value in a training step: loss_identity="):
        # resumes after epoch 3; two steps per epoch from here, so the second step meets the exploded weights
        run_finetune(_with_schedule(_spec(epochs=5, epoch_size=2), blow_up), TRAIN, TEST, work)
    assert (work / "state.pt").read_bytes() == good
    assert sorted(p.name for p in work.iterdir()) == ["state.pt"]  # no temp file left behind
    state = torch.load(work / "state.pt", weights_only=False)
    assert state["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_weights_exploding_on_the_last_step_of_an_epoch_stop_the_run_as_non_finite(reference, tmp_path):
    """The step that overflows the parameters has finite losses; the epoch's evaluation is the next computation.
    The run must still stop with :class:`NonFiniteError` (the stage's clear message) and keep the last good state,
    not fail inside the evaluation library ("distances contain NaN or inf")."""
    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    good = (work / "state.pt").read_bytes()
    blow_up = LrSchedule(((0, 0.01), (4, 1e30)), source="blow-up")
    with pytest.raises(NonFiniteError):
        run_finetune(_with_schedule(_spec(epochs=4), blow_up), TRAIN, TEST, work)  # epoch 4 = one exploding step
    assert (work / "state.pt").read_bytes() == good


def test_train_step_raises_before_any_parameter_or_state_changes():
    torch.manual_seed(0)
    model = MultiTaskInceptionResNetV1(model_config({"identity": N_IDS, "expression": N_EXPR}, input_size=75))
    strategy = build_weighting("dynamic", {}, TASKS, 1792)
    opt = build_optimizer(RMSPROP, list(model.parameters()), 0.01)
    own = build_optimizer(RMSPROP, strategy.own_parameters(), 0.1)
    centers = CenterLoss(N_IDS, 1792, alpha=0.5)
    with torch.no_grad():
        centers.centers.normal_()
    step = TrainStep(model, strategy, TASK_SET, opt, own, {"identity": centers}, clip_norm=5.0, own_clip_norm=5.0)
    params = {k: v.clone() for k, v in model.named_parameters()}
    unit = [p.clone() for p in strategy.own_parameters()]
    center_state = {k: v.clone() for k, v in centers.state_dict().items()}
    x = torch.randn(4, 3, 75, 75)
    x[1, 0, 3, 3] = float("inf")
    labels = {"identity": torch.tensor([0, 1, 2, 3]), "expression": torch.tensor([0, 1, -1, 2])}
    model.train()
    with pytest.raises(NonFiniteError, match="non-finite"):
        step(x, labels)
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(unit, strategy.own_parameters(), strict=True))
    assert all(torch.equal(center_state[k], v) for k, v in centers.state_dict().items())
    assert not opt.state and not own.state  # no optimiser slot was touched
    # the same step on clean data trains
    result = step(torch.randn(4, 3, 75, 75), labels)
    assert math.isfinite(result.total)
    assert any(not torch.equal(params[k], v) for k, v in model.named_parameters())


# --- sampler, pre-processing, schedules ------------------------------------------------------------------------------


def test_permutation_stream_crosses_permutation_boundaries():
    s = PermutationStream(5, seed=7)
    draws = torch.cat([s.next(3) for _ in range(5)])  # 15 indices = exactly 3 permutations
    perms = draws.view(3, 5)
    for p in perms:
        assert sorted(p.tolist()) == list(range(5))
    assert len({tuple(p.tolist()) for p in perms}) > 1  # fresh permutations, not one repeated
    again = PermutationStream(5, seed=7)
    assert torch.equal(torch.cat([again.next(4) for _ in range(3)]), draws[:12])  # batch size does not matter
    assert not torch.equal(torch.cat([PermutationStream(5, seed=8).next(15)]), draws)
    big = PermutationStream(3, seed=0).next(7)  # one batch longer than a permutation
    assert sorted(big[:3].tolist()) == [0, 1, 2] and sorted(big[3:6].tolist()) == [0, 1, 2]


def test_permutation_stream_state_round_trips():
    s = PermutationStream(7, seed=3)
    s.next(5)
    s.next(4)  # mid second permutation
    state = s.state_dict()
    expected = torch.cat([s.next(6) for _ in range(3)])
    other = PermutationStream(7, seed=99)
    other.load_state_dict(state)
    assert torch.equal(torch.cat([other.next(6) for _ in range(3)]), expected)
    # the saved state is a copy: drawing from the stream did not change it
    third = PermutationStream(7, seed=0)
    third.load_state_dict(state)
    assert torch.equal(torch.cat([third.next(6) for _ in range(3)]), expected)
    with pytest.raises(ValueError, match="7 images"):
        PermutationStream(8, seed=3).load_state_dict(state)
    with pytest.raises(ValueError):
        PermutationStream(0, seed=1)


def _tf_standardize(x: np.ndarray) -> np.ndarray:
    """tf.image.per_image_standardization, per image, in float64."""
    out = np.empty_like(x, dtype=np.float64)
    for i, img in enumerate(x.astype(np.float64)):
        adjusted = max(img.std(), 1.0 / math.sqrt(img.size))
        out[i] = (img - img.mean()) / adjusted
    return out


def test_standardize_matches_the_tf_formula():
    rng = np.random.default_rng(0)
    random = rng.integers(0, 256, size=(3, 3, 10, 12)).astype(np.float32)
    y = standardize(torch.from_numpy(random))
    np.testing.assert_allclose(y.numpy(), _tf_standardize(random), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.flatten(1).mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(y.flatten(1).std(1, unbiased=False).numpy(), 1, rtol=1e-5)
    # nearly constant images: the std floor 1/sqrt(C·H·W) applies, not the tiny std
    flat = np.full((2, 3, 10, 12), 100.0, dtype=np.float32)
    flat[0, 0, 0, 0] = 100.5
    flat[1] = 7.0  # exactly constant: zeros, not NaN
    y = standardize(torch.from_numpy(flat)).numpy()
    np.testing.assert_allclose(y, _tf_standardize(flat), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(y)) and np.all(y[1] == 0)
    assert y[0, 0, 0, 0] == pytest.approx((0.5 - 0.5 / 360) * math.sqrt(360), rel=1e-4)


def test_preprocess_centre_crops_for_evaluation_and_random_crops_for_training():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 100, 100), dtype=torch.uint8, generator=g)
    ev = preprocess(images, crop=96, input_size=96, train=False)
    np.testing.assert_allclose(ev.numpy(), _tf_standardize(images[:, :, 2:98, 2:98].numpy()), rtol=1e-5, atol=1e-5)
    a = preprocess(images, crop=96, input_size=96, train=True, generator=torch.Generator().manual_seed(5))
    b = preprocess(images, crop=96, input_size=96, train=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (4, 3, 96, 96)
    # each training image is the standardised version of some 96×96 window of the stored one
    for i in range(4):
        windows = [_tf_standardize(images[i : i + 1, :, t : t + 96, s : s + 96].numpy())[0]
                   for t in range(5) for s in range(5)]
        assert min(np.abs(w - a[i].numpy()).max() for w in windows) < 1e-4
    small = preprocess(images, crop=96, input_size=80, train=False)
    assert small.shape == (4, 3, 80, 80) and small.dtype == torch.float32


SCHEDULES = REPO / "data" / "protocols"


@pytest.mark.parametrize(("name", "expected"), [
    ("learning_rate_schedule_classifier_oulucasia.txt",
     {1: 0.01, 2: 1e-3, 4: 1e-3, 5: 1e-4, 7: 1e-4, 8: 1e-5, 100: 1e-5}),
    ("learning_rate_schedule_classifier_oulucasia_dyn.txt", {1: 1e-3, 4: 1e-3, 5: 1e-4, 19: 1e-4, 20: 1e-4, 500: 1e-4}),
    ("learning_rate_schedule_classifier_ckplus_dyn.txt", {1: 1e-2, 2: 1e-2, 3: 1e-3, 19: 1e-3, 20: 1e-4, 99: 1e-4}),
])
def test_the_original_schedule_files_give_the_spec_rates(name, expected):
    schedule = read_schedule(SCHEDULES / name)
    assert {e: schedule.at(e) for e in expected} == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("0: 0.1\nabc\n", ":2: expected 'epoch: learning_rate'"),
    ("0 0.1\n", ":1: expected"),
    ("0: fast\n", ":1: expected"),
    ("1.5: 0.1\n", ":1: expected"),
    ("0: 0.1\n-1: 0.01\n", ":2: epoch must be >= 0"),
    ("0: 0\n", ":1: epoch must be >= 0 and learning rate > 0"),
    ("0: 0.1\n3: 0.01\n3: 0.001\n", ":3: epochs must increase"),
    ("# only comments\n\n", "no 'epoch: learning_rate' lines"),
])
def test_bad_schedule_files_name_the_line(tmp_path, text, problem):
    path = tmp_path / "schedule.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_schedule(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and problem in msg and "\n" not in msg


def test_schedule_edges(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_schedule(tmp_path / "missing.txt")
    late = tmp_path / "late.txt"
    late.write_text("3: 0.1  # starts late\n")
    with pytest.raises(ValueError, match="no learning rate for epoch 2"):
        read_schedule(late).at(2)
    assert read_schedule(late).at(3) == 0.1
    assert LrSchedule.constant(0.02).at(1) == LrSchedule.constant(0.02).at(10_000) == 0.02
    with pytest.raises(ValueError):
        LrSchedule.constant(0.0)


def test_a_shared_center_matrix_needs_the_same_classes_in_every_task_that_uses_it():
    """The caricature set's one matrix for several branches: a task pulling its samples to another task's centers
    must have that task's classes (checked when the spec is made, before any model is built)."""
    shared = task_set(**{"tasks.identity.center": TaskCenter(factor=0.1, alpha=0.5, embedding="own", matrix="own",
                                                             updates=True),
                         "tasks.expression.center": TaskCenter(factor=0.1, alpha=0.5, embedding="own",
                                                               matrix="identity", updates=False)})
    assert make_spec(tasks=shared, n_classes={"identity": 4, "expression": 4}).tasks is shared
    with pytest.raises(ValueError, match="task 'expression' shares the center matrix of 'identity', but has 3 "
                                         "classes where 'identity' has 4"):
        make_spec(tasks=shared, n_classes={"identity": 4, "expression": 3})
