"""Evaluate verification pairs (.npy files) with the facenet/LFW protocol: k-fold accuracy, VAL@FAR, AUC, EER.

Inputs: embeddings A and B (N x D real arrays; row i of each is one side of pair i) and SAME (boolean, N).

Embeddings are L2-normalised; distance = squared Euclidean; a pair is "same" when d < threshold.

--mode clean (default): every pair, seeded shuffle before folding, VAL threshold as docs/method.md §6.2 recommends.

--mode faithful: the original code: trailing pairs dropped, contiguous folds, facenet's VAL interpolation.

A user tool, not a DVC stage: it reads no params and logs nothing to MLflow.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from pipeline.atomic import write_json
from pipeline.errors import UserError
from stages.common import user_errors

if TYPE_CHECKING:
    from pipeline.evaluation.verification import VerificationResult

DEFAULT_FARS = [1e-3, 1e-2]


class Mode(enum.StrEnum):
    clean = "clean"
    faithful = "faithful"


def _load(path: Path, what: str) -> np.ndarray:
    """One array from a .npy file; any problem is a one-line user error naming the file."""
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {what} {path} as a .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{what} {path} holds several arrays (.npz); save the one array with np.save")
    return arr


@user_errors
def command(
    embeddings_a: Annotated[Path, typer.Option("--embeddings-a", help="N x D array (.npy): first side of each pair.")],
    embeddings_b: Annotated[Path, typer.Option("--embeddings-b", help="N x D array (.npy): second side.")],
    same: Annotated[Path, typer.Option("--same", help="Boolean N array (.npy): True = same identity.")],
    folds: Annotated[int, typer.Option("--folds", min=2, help="Number of folds.")] = 10,
    far: Annotated[list[float] | None, typer.Option(
        "--far", help="FAR target for VAL@FAR; repeat for several (default 0.001 and 0.01).")] = None,
    mode: Annotated[Mode, typer.Option("--mode", help="clean: all pairs, seeded shuffle; faithful: the "
                                                      "original code's protocol.")] = Mode.clean,
    seed: Annotated[int, typer.Option("--seed", help="Shuffle seed (clean mode).")] = 0,
    shuffle: Annotated[bool | None, typer.Option(
        "--shuffle/--no-shuffle", help="Override the mode's fold order (e.g. --no-shuffle keeps LFW's official "
                                       "folds in clean mode).", show_default="clean: shuffle, faithful: no")] = None,
    normalize: Annotated[bool, typer.Option(
        "--normalize/--no-normalize", help="L2-normalise the embeddings first.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result to this file.")] = None,
) -> None:
    from pipeline.evaluation.verification import evaluate_verification, used_pairs

    a = _load(embeddings_a, "embeddings A")
    b = _load(embeddings_b, "embeddings B")
    s = _load(same, "same")
    if a.ndim != 2 or b.ndim != 2:
        raise UserError(f"embeddings must be N x D arrays, got shapes {a.shape} (A) and {b.shape} (B)")
    if a.shape != b.shape:
        raise UserError(f"embeddings A and B differ in shape: {a.shape} and {b.shape}")
    if s.ndim != 1 or len(s) != len(a):
        raise UserError(f"same must be a 1-D array of {len(a)} values (one per pair), got shape {s.shape}")
    if s.dtype == np.bool_:
        n_used = used_pairs(len(s), mode.value)
        n_same = int(s[:n_used].sum())
        if n_used >= folds and n_same in (0, n_used):
            kind = "same-identity" if n_same else "different-identity"
            raise UserError(f"all {n_used} evaluated pairs are {kind}: verification needs both classes")
    targets = DEFAULT_FARS if not far else far
    result = evaluate_verification(a, b, s, n_folds=folds, far_targets=targets, mode=mode.value, seed=seed,
                                   shuffle=shuffle, normalize=normalize)
    payload = result.to_dict()
    if out is not None:
        try:
            write_json(payload, out)
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write the result: {exc.strerror or exc}") from None
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        typer.echo(_table(result))


def _table(r: VerificationResult) -> str:
    """A short human-readable summary of a verification result."""
    order = f"shuffled, seed {r.seed}" if r.shuffled else "contiguous folds"
    lines = [
        f"pairs      {r.n_pairs:,} given, {r.n_pairs_used:,} used ({r.n_same:,} same); {r.n_folds} folds, "
        f"{r.mode} mode ({order})",
        f"accuracy   {r.accuracy:.4f} ± {r.accuracy_std:.4f}   threshold {r.threshold:.3f} (mean over folds)",
        f"AUC        {_f(r.auc)}   EER {_f(r.eer)}   AUC fold mean {_f(r.auc_fold_mean)} ({r.auc_folds} folds)",
    ]
    if r.single_class_folds:
        lines.append(f"note       {r.single_class_folds} test fold(s) hold a single class")
    for key, v in r.val_at_far.items():
        label = f"VAL@{key}".ljust(10)
        if not v.measurable:
            lines.append(f"{label} not measurable: FAR floor {v.far_floor:.2g} "
                         f"(1 / fewest different pairs in a fold's training folds)")
        elif v.val is None:
            lines.append(f"{label} undefined (no fold has both a threshold and same pairs)")
        else:
            lines.append(f"{label} {v.val:.4f} ± {v.val_std:.4f}   FAR {_f(v.far)}   threshold {_f(v.threshold, 3)}")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
