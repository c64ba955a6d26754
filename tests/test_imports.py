"""The library runs on a bare torch install: no `pipeline` module may import mlflow or dvc."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pipeline
from tests.conftest import REPO

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
