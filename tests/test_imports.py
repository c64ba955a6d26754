"""The library runs on a bare torch install: no `pipeline` module may import mlflow or dvc."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pipeline
from tests.conftest import REPO
from tests.import_graph import project_imports

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'mlflow', 'dvc', 'typer'}:
            raise ImportError('blocked in pipeline/: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print('imported', len(sys.argv) - 1)
"""


def test_every_pipeline_module_imports_without_mlflow_dvc_typer():
    names = ["pipeline"] + [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")]
    assert "pipeline.data.manifest" in names and "pipeline.config" in names
    res = subprocess.run([sys.executable, "-c", BLOCKER, *names], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"imported {len(names)}" in res.stdout


# --- the package-level import order ------------------------------------------------------------------------------

#: the library's packages (and top-level modules), lowest first: each may import only those listed before it
#: (docs/architecture.md explains the layers)
ORDER = [
    "pipeline.errors", "pipeline.constants", "pipeline.processes", "pipeline.atomic", "pipeline.paths",
    "pipeline.faces", "pipeline.settings", "pipeline.reader_options", "pipeline.models", "pipeline.weighting",
    "pipeline.losses", "pipeline.evaluation", "pipeline.config", "pipeline.data", "pipeline.align", "pipeline.folds",
    "pipeline.training", "pipeline.disjoint", "pipeline.report",
]
#: stage modules every command may use; a command never imports another command (only the CLI shell does)
STAGE_HELPERS = {"stages.common", "stages.multitask_run", "stages.provenance", "stages.tracking",
                 "stages.training_runs"}
STAGE_SHELL = {"stages", "stages.app", "stages.__main__"}


def _unit(module: str) -> str:
    """The unit of the import graph a module belongs to: ``pipeline.<package or module>`` or the stage module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _graph() -> dict[str, dict[str, set[str]]]:
    """``{unit: {imported unit: {importing files}}}`` over every module of pipeline/ and stages/."""
    graph: dict[str, dict[str, set[str]]] = {}
    for file in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "stages").glob("*.py")]):
        module = ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for imported in project_imports(file):
            a, b = _unit(module), _unit(imported)
            if a != b:
                graph.setdefault(a, {}).setdefault(b, set()).add(file.relative_to(REPO).as_posix())
    return graph


def test_every_library_package_is_in_the_declared_order():
    units = {_unit(".".join(p.relative_to(REPO).with_suffix("").parts)) for p in (REPO / "pipeline").rglob("*.py")}
    assert units - {"pipeline.__init__"} == set(ORDER), "add the new package to ORDER (and docs/architecture.md)"


def test_library_imports_go_only_downwards():
    """No cycle and no upward import between the library's packages, imports inside functions included."""
    rank = {unit: i for i, unit in enumerate(ORDER)}
    upward = [f"{a} imports {b} ({', '.join(sorted(files))})"
              for a, targets in _graph().items() if a in rank
              for b, files in targets.items() if b.startswith("stages") or rank[b] >= rank[a]]
    assert not upward, "\n".join(upward)


def test_stage_commands_import_only_the_library_and_the_stage_helpers():
    bad = [f"{a} imports {b}" for a, targets in _graph().items() if a.startswith("stages")
           and a not in STAGE_SHELL for b in targets
           if b.startswith("stages") and b not in STAGE_HELPERS]
    assert not bad, "\n".join(bad)


def test_validating_params_imports_no_dataset_code():
    """The params schema stays import-light: loading it does not import the readers, the demo or the manifest code,
    so those are not code deps of every stage."""
    code = ("import sys, pipeline.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('pipeline.data', 'pipeline.align', "
            "'pipeline.faces', 'pipeline.training'))))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
