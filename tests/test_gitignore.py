"""The repository's .gitignore: what a user's machine adds never shows up as untracked."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_a_venv_folder_or_a_symlinked_venv_is_ignored(tmp_path, kind):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    if kind == "folder":
        (repo / ".venv").mkdir()
        (repo / ".venv" / "pyvenv.cfg").write_text("")
    else:  # a venv kept elsewhere (another disk), linked in
        (tmp_path / "venv").mkdir()
        (repo / ".venv").symlink_to(tmp_path / "venv")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert status == ["?? .gitignore"]
