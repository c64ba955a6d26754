"""The project's imports read from the source (``ast``), imports inside functions included: shared by the
package-order test (tests/test_imports.py) and the code-deps test (tests/test_dvc_wiring.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def module_file(mod: str) -> Path | None:
    """The file of project module ``mod`` (a module or a package's ``__init__.py``), or None."""
    path = REPO / mod.replace(".", "/")
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def project_imports(file: Path) -> set[str]:
    """Project modules imported anywhere in ``file``: ``import a.b``, ``from a import b`` (``a`` and, when it is a
    module, ``a.b``).

    Raises:
        AssertionError: a relative import (the project uses absolute ``pipeline.*`` imports only).
    """
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{file}: relative import (use absolute pipeline.* imports)")
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in {"pipeline", "stages"} and module_file(m)}
