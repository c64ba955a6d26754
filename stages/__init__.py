"""One thin Typer command per DVC stage: read its params sections, call ``pipeline``, write outs, log to MLflow.

Run as ``python -m stages <command>``; ``python -m stages --help`` lists them.
"""

from stages.app import app

__all__ = ["app"]
