"""``params.yaml`` is laid out the way ``dvc exp run -S`` writes it back, and declares every key ``-S`` may set.

``-S`` calls DVC's :func:`dvc.utils.hydra.apply_overrides`: it reloads the file with ruamel.yaml (round trip),
replaces every list and scalar with the override's result and dumps it again. A file in that dump's layout comes
back byte for byte, so an override changes only the lines it sets. ``-S`` cannot add a key without ``+``, so each
``finetune.methods.<m>`` block writes out ``epochs`` and every option its weighting reads. No training, no DVC repo.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.weighting.options import weighting_options

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _override(tmp_path: Path, overrides: list[str]) -> tuple[str, str]:
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, path)
    apply_overrides(path, overrides)
    return PARAMS.read_text(encoding="utf-8"), path.read_text(encoding="utf-8")


def test_a_no_op_override_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    seed = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["base"]["seed"]
    before, after = _override(tmp_path, [f"base.seed={seed}"])
    assert after == before, "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                                         "params.yaml", "after dvc exp run -S (no-op)"))


def test_an_override_changes_only_the_lines_it_sets(tmp_path: Path) -> None:
    from ruamel.yaml import YAML

    before, after = _override(tmp_path, ["finetune.methods.dynamic.epochs=2", "folds.run=[0,1]"])
    doc = YAML().load(before)
    epochs_line = doc["finetune"]["methods"]["dynamic"].lc.key("epochs")[0]
    run = doc["folds"]["run"]
    assert list(run) == [0, 1, 2], "the test expects folds.run: [0, 1, 2]"
    dropped_item = run.lc.item(2)[0]  # the line `- 2`
    old, new = before.splitlines(), after.splitlines()
    changed_old, changed_new = set(), []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            changed_old |= set(range(i1, i2))
            changed_new += new[j1:j2]
    assert changed_old == {epochs_line, dropped_item}, [old[i] for i in sorted(changed_old)]
    assert [line.split("#")[0].strip() for line in changed_new] == ["epochs: 2"]

    expected = yaml.safe_load(before)
    expected["finetune"]["methods"]["dynamic"]["epochs"] = 2
    expected["folds"]["run"] = [0, 1]
    assert yaml.safe_load(after) == expected


def _method_blocks() -> list[tuple[str, dict]]:
    params = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    return sorted(params["finetune"]["methods"].items())


@pytest.mark.parametrize(("method", "block"), _method_blocks(), ids=[m for m, _ in _method_blocks()])
def test_every_option_of_a_method_is_declared(method: str, block: dict) -> None:
    params = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    tasks = list(params["task_sets"][params["finetune"]["common"]["task_set"]]["tasks"])
    wanted = ["weighting", "epochs", *weighting_options(block["weighting"], tasks)]
    missing = [k for k in wanted if k not in block]
    assert not missing, (f"finetune.methods.{method} does not declare {missing}: `dvc exp run -S` would need "
                         f"`+finetune.methods.{method}.<key>`")
    assert sorted(block) == sorted(wanted)
