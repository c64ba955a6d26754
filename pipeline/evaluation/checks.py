"""Input checks shared by the evaluation modules, and the error they raise."""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError

__all__ = ["EvaluationInputError", "as_embeddings", "as_labels", "as_same", "l2_normalize"]


class EvaluationInputError(UserError, ValueError):
    """Evaluation inputs are malformed: a ``ValueError`` for library callers, a one-line user error for commands."""


def as_embeddings(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Check and convert embeddings ``Array[N, D]`` of real numbers to float64; NaN or inf is an error."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise EvaluationInputError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise EvaluationInputError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise EvaluationInputError(f"{name} has NaN or inf in {len(rows)} row(s), first row {rows[0]}")
    return x


def as_same(same: np.ndarray, n: int, name: str = "same") -> np.ndarray:
    """Check the pair labels: a boolean ``Array[n]`` (True = same identity)."""
    same = np.asarray(same)
    if same.dtype != np.bool_:
        raise EvaluationInputError(f"{name} must be a boolean array (dtype bool), got dtype {same.dtype}; "
                                   f"convert it with .astype(bool) if it holds 0/1")
    if same.shape != (n,):
        raise EvaluationInputError(f"{name} must have shape ({n},) to match the pairs, got {same.shape}")
    return same


def as_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Check integer class labels ``Array[n]``."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise EvaluationInputError(f"{name} must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationInputError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    return labels


def l2_normalize(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows of ``Array[N, D]`` scaled to unit L2 norm; a zero row is an error (its direction is undefined)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise EvaluationInputError(f"{name} has {len(zero)} all-zero row(s) (first row {zero[0]}): "
                                   f"cannot L2-normalise")
    return x / norms
