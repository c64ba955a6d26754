"""The Typer application: a callback for the shared options, and one command per DVC stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from stages import align, detect, download, embed, finetune, folds, manifest, pixel_baseline, pretrain, report, verify

app = typer.Typer(
    name="stages",
    help="Dynamic multi-task face recognition + expression: the pipeline stages (each one a DVC stage).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


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


app.command("download", help=download.__doc__)(download.command)
app.command("manifest", help=manifest.__doc__)(manifest.command)
app.command("align", help=align.__doc__)(align.command)
app.command("folds", help=folds.__doc__)(folds.command)
app.command("pretrain", help=pretrain.__doc__)(pretrain.command)
app.command("finetune", help=finetune.__doc__)(finetune.command)
app.command("pixel_baseline", help=pixel_baseline.__doc__)(pixel_baseline.command)
app.command("detect", help=detect.__doc__)(detect.command)
app.command("verify", help=verify.__doc__)(verify.command)
app.command("embed", help=embed.__doc__)(embed.command)
app.command("report", help=report.__doc__)(report.command)
