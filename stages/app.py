"""The Typer application: a callback for the shared options, and one command per DVC stage."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from stages import (
    align,
    cari_pixel,
    cari_report,
    cari_split,
    cari_train,
    check_params,
    detect,
    disjoint_report,
    disjoint_train,
    download,
    embed,
    finetune,
    folds,
    manifest,
    pixel_baseline,
    pretrain,
    report,
    verify,
)

app = typer.Typer(
    name="stages",
    help="Dynamic multi-task face recognition + expression: the pipeline stages (each one a DVC stage).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj):`(~?)([\w.]+)`")


def terminal_help(doc: str | None) -> str:
    """A module docstring as ``--help`` text: Sphinx roles and double backticks become plain `code`, and each
    paragraph (or list item) is one line, so the terminal wraps it once instead of breaking the source lines again.
    A paragraph after one ending in ``::`` (a literal block) is kept as it is."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", doc or "")
    text = text.replace("``", "`")
    out, literal = [], False
    for para in text.strip().split("\n\n"):
        if literal:
            out.append(para)
        else:
            items: list[str] = []
            for line in para.splitlines():
                if line.lstrip().startswith(("- ", "* ")) or not items:
                    items.append(line.strip())
                else:
                    items[-1] += " " + line.strip()
            out.append("\n".join(items))
        literal = para.rstrip().endswith("::")
    return "\n\n".join(out).replace("::\n", ":\n")


@app.callback()
def main(
    ctx: typer.Context,
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Each command is one DVC stage; `dvc repro` runs them in order. Run one by hand for debugging."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("PIL", "matplotlib", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = {"params_path": params}


#: the commands in --help order: the DVC stages in pipeline order, the user tools, the report
COMMANDS = [check_params, download, manifest, align, folds, cari_split, pretrain, finetune, pixel_baseline, cari_train,
            cari_pixel, disjoint_train, detect, verify, embed, report, cari_report,
            disjoint_report]
for _module in COMMANDS:
    app.command(_module.__name__.rpartition(".")[2], help=terminal_help(_module.__doc__))(_module.command)
