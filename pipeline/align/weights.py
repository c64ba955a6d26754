"""Locate and load the MTCNN weights that the ``mtcnn`` PyPI package ships, without importing that package.

The ``mtcnn`` package (1.0.0) stores P-Net, R-Net and O-Net as joblib pickles compressed with lz4
(``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``); each holds the list of arrays that Keras' ``set_weights``
takes, in layer order. Its ``__init__`` imports TensorFlow, so we find the folder with
:func:`importlib.util.find_spec` (which does not execute the package) and read the files with joblib.

Where ``mtcnn``/``joblib``/``lz4`` are not installed (a bare GPU box), export the weights once to a plain
``.npz`` (``python -m pipeline.align.weights export mtcnn_weights.npz``) and pass that file instead:
loading an ``.npz`` needs only NumPy.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

NETS = ("pnet", "rnet", "onet")
# Number of arrays per net in Keras layer order (conv kernel, bias, PReLU alpha, ..., heads).
N_ARRAYS = {"pnet": 13, "rnet": 16, "onet": 21}

__all__ = ["NETS", "load_weights", "mtcnn_package_weights_dir", "export_npz"]


def mtcnn_package_weights_dir() -> Path:
    """The ``assets/weights`` folder of the installed ``mtcnn`` package (found without importing it)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MTCNN weights: the `mtcnn` package is not installed; install the project's lock file "
                        "(make install) or pass a weights file exported with `python -m pipeline.align.weights export`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    if not all((folder / f"{n}.lz4").is_file() for n in NETS):
        raise UserError(f"MTCNN weights: {folder} lacks pnet.lz4/rnet.lz4/onet.lz4 (a damaged `mtcnn` install?)")
    return folder


def _check(weights: dict[str, list[np.ndarray]], source: str) -> dict[str, list[np.ndarray]]:
    for net in NETS:
        arrays = weights.get(net)
        if arrays is None or len(arrays) != N_ARRAYS[net]:
            got = "missing" if arrays is None else f"{len(arrays)} arrays"
            raise UserError(f"MTCNN weights {source}: {net} has {got}, expected {N_ARRAYS[net]} arrays")
    return weights


def load_weights(path: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """The three nets' weight lists, keyed ``pnet``/``rnet``/``onet``.

    Args:
        path: ``None`` (the installed ``mtcnn`` package), a folder holding ``pnet.lz4``, ``rnet.lz4``,
            ``onet.lz4``, or an ``.npz`` written by :func:`export_npz`.
    """
    if path is None:
        path = mtcnn_package_weights_dir()
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path) as z:
                weights = {net: [z[f"{net}_{i:02d}"] for i in range(N_ARRAYS[net]) if f"{net}_{i:02d}" in z]
                           for net in NETS}
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise UserError(f"MTCNN weights {path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
        return _check(weights, str(path))
    if path.is_dir():
        try:
            import joblib
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise UserError(f"MTCNN weights {path}: reading .lz4 weights needs joblib and lz4; "
                            "export them to .npz on a machine that has them") from exc
        weights = {}
        for net in NETS:
            f = path / f"{net}.lz4"
            if not f.is_file():
                raise UserError(f"MTCNN weights: {f} not found")
            try:
                weights[net] = [np.asarray(a, dtype=np.float32) for a in joblib.load(f)]
            except Exception as exc:  # joblib/lz4/pickle raise many types on a damaged file
                raise UserError(f"MTCNN weights {f}: not a readable joblib file ({type(exc).__name__}: {exc})"
                                ) from exc
        return _check(weights, str(path))
    raise UserError(f"MTCNN weights: {path} is neither a folder with pnet/rnet/onet.lz4 nor an .npz file")


def export_npz(out: str | Path, source: str | Path | None = None) -> Path:
    """Write the weights to a NumPy-only ``.npz`` (arrays ``pnet_00`` ... ``onet_20``)."""
    weights = load_weights(source)
    arrays = {f"{net}_{i:02d}": a for net in NETS for i, a in enumerate(weights[net])}
    out = Path(out)
    np.savez(out, **arrays)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.align.weights", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the weights to a NumPy-only .npz")
    ex.add_argument("out")
    ex.add_argument("--source", default=None, help="folder with pnet/rnet/onet.lz4 (default: the mtcnn package)")
    args = parser.parse_args(argv)
    print(export_npz(args.out, args.source))


if __name__ == "__main__":
    main()
