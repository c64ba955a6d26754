"""`python -m stages <command> --help`: the module docstrings read as plain text in a terminal."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stages.app import app, terminal_help

COMMANDS = ["download", "manifest", "align", "folds", "cari_split", "pretrain", "finetune", "pixel_baseline",
            "cari_train", "cari_pixel", "detect", "verify", "embed", "report", "cari_report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_sphinx_markup(command):
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:"):
        assert markup not in res.output, f"{command} --help shows {markup}"


def test_terminal_help_joins_paragraph_lines_keeps_items_and_literal_blocks():
    doc = ("Title line.\n\nReads ``a.b`` via :func:`pipeline.x.load` and\n:class:`~pipeline.y.Thing`.\n\n"
           "- one item\n  continued\n- two\n\nLayout::\n\n    <root>/a\n    <root>/b\n")
    assert terminal_help(doc) == ("Title line.\n\nReads `a.b` via `pipeline.x.load` and `Thing`.\n\n"
                                  "- one item continued\n- two\n\nLayout:\n\n    <root>/a\n    <root>/b")
