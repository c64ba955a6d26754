"""The one way outputs are written (pipeline/atomic.py) and the one resume file of every training family
(pipeline/training/state.py): a failure leaves the previous output whole and no temporary behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.atomic import atomic_dir, atomic_file, atomic_files, remove_stale_temps, write_json
from pipeline.training.state import TrainingState, generator


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and not path.exists()
        tmp.write_text("one")
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "one" and _siblings(path.parent) == ["out.txt"]


def test_atomic_files_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt), atomic_files(a, b) as (ta, tb):
        ta.write_text("a")
        raise KeyboardInterrupt  # before b is written: neither appears
    assert _siblings(tmp_path) == []
    with atomic_files(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
    assert (a.read_text(), b.read_text()) == ("a", "b") and _siblings(tmp_path) == ["a.json", "b.json"]


def test_atomic_dir_swaps_the_whole_folder(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError("failed stage")
    assert _siblings(out) == ["old.txt"] and _siblings(tmp_path) == ["run"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _siblings(out) == ["new.txt"] and _siblings(tmp_path) == ["run"]


def test_the_next_writer_removes_the_temporaries_of_dead_writers_only(tmp_path):
    """A writer killed by SIGKILL leaves its temporaries; the next writer of the same path deletes those of dead
    processes, and keeps a live writer's and other paths' ones."""
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    dead, live = child.pid, os.getppid()
    out = tmp_path / "run"
    stale = [tmp_path / f".run.tmp-{dead}", tmp_path / f".run.old-{dead}"]
    kept = [tmp_path / f".run.tmp-{live}", tmp_path / f".other.tmp-{dead}", tmp_path / ".run.tmp-x"]
    for d in stale + kept:
        d.mkdir()
        (d / "half.bin").write_bytes(b"x")
    (tmp_path / f".m.json.tmp-{dead}").write_text("{")
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _siblings(tmp_path) == sorted([".m.json.tmp-" + str(dead), "run", *(d.name for d in kept)])
    write_json({}, tmp_path / "m.json")  # atomic_file: the same for a file
    assert not (tmp_path / f".m.json.tmp-{dead}").exists()
    assert remove_stale_temps(tmp_path / "other") == [tmp_path / f".other.tmp-{dead}"]
    assert remove_stale_temps(tmp_path / "missing" / "x") == []


def test_write_json_is_sorted_indented_and_newline_terminated(tmp_path):
    path = write_json({"b": 1, "a": [1, 2]}, tmp_path / "m.json")
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"


def test_training_state_round_trip_restores_objects_and_random_generators(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(7)
    state = TrainingState(tmp_path / "work", "test-state/1", "test")
    assert state.load() is None
    objects = {"model": model, "optimizer": opt, "centers": None, "gen": generator(gen)}
    torch.manual_seed(3)
    np.random.seed(4)
    state.save(objects, rng=torch.device("cpu"), epoch=2, rows=[{"loss": 1.0}])
    expected = (torch.rand(2), np.random.rand(2), torch.rand(2, generator=gen))

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_gen = torch.Generator().manual_seed(0)
    st = state.load()
    assert st["epoch"] == 2 and st["rows"] == [{"loss": 1.0}] and st["centers"] is None
    state.restore(st, {"model": fresh, "optimizer": fresh_opt, "centers": None, "gen": generator(fresh_gen)},
                  rng=torch.device("cpu"))
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])
    got = (torch.rand(2), np.random.rand(2), torch.rand(2, generator=fresh_gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
    assert _siblings(tmp_path / "work") == ["state.pt"]


def test_a_state_file_of_another_family_is_refused_with_the_folder_to_delete(tmp_path):
    TrainingState(tmp_path, "dmtl-pretrain-state/1", "pretraining").save({}, step=1)
    with pytest.raises(ValueError, match=r"not a fine-tuning state file; delete the folder .* to start over"):
        TrainingState(tmp_path, "dmtl-finetune-state/2", "fine-tuning").load()
