"""bench/compare_outputs.py: the script that says whether a change kept the demo outputs bit-identical."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import torch
import yaml

from bench.compare_outputs import compare_repos, main


def _md5_dir(root: Path) -> str:
    h = hashlib.md5()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest() + ".dir"


def _lock(repo: Path, outs: list[str]) -> None:
    """A dvc.lock with one stage per out (md5 of its content, as DVC would record a change)."""
    stages = {}
    for i, out in enumerate(outs):
        p = repo / out
        md5 = _md5_dir(p) if p.is_dir() else hashlib.md5(p.read_bytes()).hexdigest()
        stages[f"s{i}"] = {"cmd": "x", "outs": [{"path": out, "hash": "md5", "md5": md5}]}
    (repo / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def _repo(root: Path, *, present: bool = False, weight: float = 1.0, gradnorm: str = "0.5",
          table: str = "| dynamic | 91.0 |") -> Path:
    run = root / "data" / "finetune" / "d" / "fold0-dynamic"
    run.mkdir(parents=True)
    steps = pd.DataFrame({"step": [1, 2], "loss_identity": [0.5, 0.25]})
    if present:
        steps["present_identity"] = [1, 0]
    steps.to_csv(run / "steps.csv", index=False)
    torch.save({"model": {"w": torch.full((2, 2), weight)}, "config": {"layout": "new" if present else "old"}},
               run / "model.pt")
    (root / "data" / "manifest.parquet").write_bytes(b"same")
    (root / "metrics" / "finetune").mkdir(parents=True)
    (root / "metrics" / "finetune" / "fold0-gradnorm.json").write_text(f'{{"acc": {gradnorm}}}\n')
    (root / "reports").mkdir()
    (root / "reports" / "tables.md").write_text(f"# table\n{table}\n")
    _lock(root, ["data/manifest.parquet", "data/finetune/d/fold0-dynamic", "metrics/finetune/fold0-gradnorm.json"])
    return root


def test_an_identical_rerun_is_identical(tmp_path):
    old, new = _repo(tmp_path / "a"), _repo(tmp_path / "b")
    findings = compare_repos(old, new)
    assert {f.verdict for f in findings} == {"identical"}
    assert main([str(old), str(new)]) == 0


def test_added_columns_and_a_rewritten_checkpoint_with_equal_tensors_pass(tmp_path, capsys):
    old, new = _repo(tmp_path / "a"), _repo(tmp_path / "b", present=True)
    by = {f.path: f for f in compare_repos(old, new)}
    assert by["data/finetune/d/fold0-dynamic/steps.csv"].verdict == "old columns identical"
    assert "present_identity" in by["data/finetune/d/fold0-dynamic/steps.csv"].detail
    assert by["data/finetune/d/fold0-dynamic/model.pt"].verdict == "same tensors"
    assert by["data/manifest.parquet"].verdict == "identical"
    assert main([str(old), str(new)]) == 0
    assert "no unexpected difference" in capsys.readouterr().out


def test_a_changed_tensor_a_changed_column_or_a_changed_table_fails(tmp_path, capsys):
    old = _repo(tmp_path / "a")
    new = _repo(tmp_path / "b", weight=1.0 + 2**-20, table="| dynamic | 91.1 |")
    steps = new / "data/finetune/d/fold0-dynamic/steps.csv"
    steps.write_text(steps.read_text().replace("0.25", "0.250001"))
    by = {f.path: f for f in compare_repos(old, new)}
    assert by["data/finetune/d/fold0-dynamic/model.pt"].verdict == "differs"
    assert by["data/finetune/d/fold0-dynamic/steps.csv"].verdict == "differs"
    assert by["reports/tables.md"].verdict == "differs"
    assert "'| dynamic | 91.0 |' -> '| dynamic | 91.1 |'" in by["reports/tables.md"].detail
    assert main([str(old), str(new)]) == 1
    assert "3 unexpected" in capsys.readouterr().out


def test_expected_differences_are_named_and_missing_files_are_not_forgiven(tmp_path):
    old, new = _repo(tmp_path / "a"), _repo(tmp_path / "b", gradnorm="0.6")
    assert main([str(old), str(new)]) == 1
    assert main([str(old), str(new), "--expect", "gradnorm"]) == 0
    shutil.rmtree(new / "reports")
    by = {f.path: f for f in compare_repos(old, new, ["gradnorm"])}
    assert by["reports/tables.md"].verdict == "only old"


def test_a_checkout_without_dvc_lock_is_one_error(tmp_path, capsys):
    old = _repo(tmp_path / "a")
    assert main([str(old), str(tmp_path)]) == 2
    assert "dvc.lock not found" in capsys.readouterr().err




def test_a_file_of_every_method_is_expected_only_where_its_differing_parts_name_the_method(tmp_path):
    """A table or a JSON summary holds every method: it passes when only the expected method's lines or keys
    differ, and fails as soon as another one does."""
    old = _repo(tmp_path / "a", table="| GradNorm | 50.0 |\n| dynamic | 91.0 |")
    new = _repo(tmp_path / "b", table="| GradNorm | 52.0 |\n| dynamic | 91.0 |")
    for repo, value in ((old, 0.5), (new, 0.6)):
        (repo / "metrics" / "report.json").write_text(json.dumps({"methods": {"gradnorm": {"acc": value},
                                                                              "dynamic": {"acc": 0.9}}}))
    by = {f.path: f for f in compare_repos(old, new, ["gradnorm"])}
    assert by["reports/tables.md"].verdict == "expected" and "1 lines differ" in by["reports/tables.md"].detail
    assert by["metrics/report.json"].verdict == "expected"
    (new / "reports" / "tables.md").write_text("# table\n| GradNorm | 52.0 |\n| dynamic | 91.5 |\n")
    (new / "metrics" / "report.json").write_text(json.dumps({"methods": {"gradnorm": {"acc": 0.6},
                                                                         "dynamic": {"acc": 0.95}}}))
    by = {f.path: f for f in compare_repos(old, new, ["gradnorm"])}
    assert by["reports/tables.md"].verdict == "differs" and by["metrics/report.json"].verdict == "differs"


def test_a_stale_lock_entry_whose_out_exists_nowhere_is_not_a_difference(tmp_path):
    old, new = _repo(tmp_path / "a"), _repo(tmp_path / "b")
    lock = yaml.safe_load((old / "dvc.lock").read_text())
    lock["stages"]["gone"] = {"cmd": "x", "outs": [{"path": "data/finetune/d/fold0-equal", "md5": "0" * 32 + ".dir"}]}
    (old / "dvc.lock").write_text(yaml.safe_dump(lock))
    by = {f.path: f for f in compare_repos(old, new)}
    assert by["data/finetune/d/fold0-equal"].verdict == "in neither tree" and by["data/finetune/d/fold0-equal"].ok
    (old / "data/finetune/d/fold0-equal").mkdir()
    (old / "data/finetune/d/fold0-equal/model.pt").write_bytes(b"x")
    assert not {f.path: f for f in compare_repos(old, new)}["data/finetune/d/fold0-equal"].ok
