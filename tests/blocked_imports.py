"""Run a benchmark module as on a GPU box that lacks the project's heavier packages.

``run_blocked(module, blocked, args)`` starts ``python -c RUNNER`` in the repo: the ``blocked`` top-level packages
look uninstalled (``PathFinder.find_spec`` returns None for them, and none may be imported already), then
``module`` runs as ``__main__`` with ``args``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from tests.conftest import REPO

RUNNER = """
import runpy, sys
from importlib.machinery import PathFinder
MODULE, BLOCKED = sys.argv[1], set(sys.argv[2].split(','))
assert not BLOCKED & {m.split('.')[0] for m in sys.modules}
_find = PathFinder.find_spec
def find_spec(name, path=None, target=None):
    return None if name.split('.')[0] in BLOCKED else _find(name, path, target)
PathFinder.find_spec = staticmethod(find_spec)
sys.argv = [MODULE, *sys.argv[3:]]
runpy.run_module(MODULE, run_name='__main__', alter_sys=True)
"""


def run_blocked(module: str, blocked: Sequence[str], args: Sequence[str], timeout: float = 180
                ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, module, ",".join(blocked), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
