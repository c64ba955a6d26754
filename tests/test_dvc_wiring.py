"""dvc.yaml and the stage modules agree: declared params, code deps, and the CLI lists every stage."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.app import app
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _command(stage: dict) -> str:
    cmd = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    m = re.match(r"python -m stages (\w+)", cmd)
    assert m, f"stage cmd must be `python -m stages <command>`: {cmd}"
    return m.group(1)


@pytest.mark.parametrize("stage_name", sorted(DVC))
def test_declared_params_match_stage_module(stage_name):
    stage = DVC[stage_name]
    body = stage.get("do", stage)
    module = importlib.import_module(f"stages.{_command(stage)}")
    declared_in_code = [s.replace("{name}", "${key}") for s in module.DECLARED]
    assert body["params"] == declared_in_code
    assert f"stages/{_command(stage)}.py" in body["deps"], "a stage depends on its own module"
    for dep in body["deps"]:
        if dep.startswith(("pipeline/", "stages/")):
            assert (REPO / dep).exists(), f"{stage_name}: declared dep {dep} does not exist"


#: modules that cannot change a stage's outputs (logging, the CLI shell that dispatches to the command), so they
#: are not code deps; the CLI shell also imports every other command, which is not followed
NOT_DEPS = {"stages/tracking.py", "pipeline/__init__.py", "pipeline/data/__init__.py"}
NOT_FOLLOWED = {"stages", "stages.app", "stages.__main__"}


def _module_file(mod: str) -> Path | None:
    path = REPO / mod.replace(".", "/")
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(file: Path) -> set[str]:
    """Project modules imported anywhere in ``file`` (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in {"pipeline", "stages"} and _module_file(m)}


def _closure(mod: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [mod]
    while todo:
        file = _module_file(todo.pop())
        if file is None or file in seen:
            continue
        seen.add(file)
        for m in _imports(file):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = m.split(".")
            todo.extend(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p not in NOT_FOLLOWED)
    return seen


@pytest.mark.parametrize("stage_name", sorted(DVC))
def test_code_a_stage_runs_is_declared_as_dep(stage_name):
    """Every project module a stage command can import (transitively) is a dep, or below a dep folder."""
    stage = DVC[stage_name]
    body = stage.get("do", stage)
    deps = [d.rstrip("/") for d in body["deps"]]
    for file in sorted(_closure(f"stages.{_command(stage)}")):
        rel = file.relative_to(REPO).as_posix()
        if rel in NOT_DEPS:
            continue
        assert any(rel == d or rel.startswith(d + "/") for d in deps), (
            f"{stage_name} runs {rel} but dvc.yaml does not list it (or a folder above it) as a dep")


def test_cli_lists_every_stage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in DVC.values():
        assert _command(stage) in result.output
