"""Dynamic multi-task learning for face recognition with facial expression: the importable library.

Nothing in this package imports mlflow or dvc: the training core runs on a bare torch install.
Pipeline stages (`stages/`) are thin Typer commands around it.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
