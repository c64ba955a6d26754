"""What every stage command shares: loading its declared params, clean user errors and interruptions, a progress
bar."""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from pipeline.config import StageParams, load_params
from pipeline.errors import UserError

__all__ = ["Terminated", "finetune_dataset", "load_stage_params", "progress_bar", "remove_other_work", "user_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def load_stage_params(ctx: typer.Context, declared: list[str]) -> StageParams:
    """Validate the whole params file, then expose only the sections this stage declares in ``dvc.yaml``."""
    params = load_params(ctx.obj["params_path"])
    for section in declared:
        head, _, rest = section.partition(".")
        name = rest.split(".")[0]
        if head == "datasets" and name and name not in params.datasets:
            known = ", ".join(sorted(params.datasets))
            raise UserError(f"unknown dataset {name!r}: params.yaml defines {known}")
    return StageParams(params, declared)


def finetune_dataset(params: Any, dataset: str | None) -> str:
    """The ``--dataset`` of a per-dataset command: one of ``finetune.datasets`` (by default the only one).

    Raises:
        UserError: an unknown dataset, or none given while several are listed.
    """
    listed = list(params.finetune.datasets)
    if dataset is None:
        if len(listed) != 1:
            raise UserError(f"--dataset: finetune.datasets lists {', '.join(listed) or 'none'}: name one")
        return listed[0]
    if dataset not in listed:
        raise UserError(f"--dataset {dataset}: not in finetune.datasets ({', '.join(listed) or 'empty'})")
    return dataset


def remove_other_work(keep: Path) -> None:
    """Delete the resume folders beside ``keep`` of the same job made with other params, inputs or code: they can
    never resume. A job's folder is ``<job>-<key>`` (``key``: 16 hex digits of the stage's work key); only folders
    of exactly that shape for the same ``<job>`` are deleted, never ``keep`` itself."""
    job = keep.name.rpartition("-")[0]
    for d in keep.parent.glob(f"{job}-*"):
        if d != keep and d.is_dir() and re.fullmatch(r"[0-9a-f]{16}", d.name.removeprefix(f"{job}-")):
            shutil.rmtree(d, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM (what ``kill``, ``timeout`` or a scheduler send) while a command runs.

    A :class:`KeyboardInterrupt`, so that everything that cleans up after Ctrl-C (``finally`` blocks, context
    managers, DataLoader workers, the MLflow run) does the same after SIGTERM.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_sigterm(signum: int, frame: Any) -> None:
    """Raise :class:`Terminated` once; a repeated SIGTERM while cleaning up is ignored (a second kill must not
    leave half a cleanup)."""
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the body runs (in the main thread), SIGTERM raises :class:`Terminated`; the previous handler is put
    back after."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(fn: F) -> F:
    """Turn a :class:`UserError` into one line on stderr and exit code 1 (no traceback); an interruption into
    one line and the shell's codes: ``error: interrupted (SIGINT)``, exit 130 (Ctrl-C), or
    ``error: terminated by SIGTERM``, exit 143. Outputs, temporary folders, workers and the MLflow run (ended
    KILLED) are cleaned up first; resume state is kept for the next run."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _terminate_as_interrupt():
                return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except Terminated as exc:
            typer.echo(f"error: terminated by {signal.Signals(exc.signum).name}", err=True)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted (SIGINT)", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (rate and ETA); yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            t = progress.tasks[task]
            if t.elapsed:
                progress.update(task, rate=f"{t.completed / t.elapsed:,.0f} {unit}/s")

        yield advance
