"""The original expression pair-file format (``IdentitySplit_4th_10fold_oulucasiapairs_Six.txt``, docs/method.md §5.4).

Format: one header line, then one pair per line, fields separated by whitespace::

    No  Input_img  Ref_img  IdentityIssame  Expression_actual  Expression_require  Expression_ref  ExpressionIsrequire
    0  /data/zming/datasets/Oulu-Casia/VL_Strong_mtcnnpy_182_160/P022/Happiness/P022_Happiness_023.png  \
       /data/zming/.../P022/Anger/P022_Anger_000.png  True  3  3  -1  True

``No`` is the row number, the two booleans are ``True``/``False``, the expression columns are codes of the label
set the file was written with (Oulu "Six": 0 Anger … 5 Surprise; ``Expression_ref`` is always -1).

Mapping an image path to a manifest image id
--------------------------------------------
1. Strip ``prefix`` (the original absolute folder of the aligned images, e.g.
   ``/data/zming/datasets/Oulu-Casia/VL_Strong_mtcnnpy_182_160/``); ``None`` keeps the last three path components.
2. The rest must read ``<subject>/<expression>/<subject>_<expression>_<fff>.<ext>``.
3. ``fff`` is the **0-based index of the frame in its sequence**, i.e. our manifest's ``frame``: the reference images
   are all ``_000``, the neutral first frame (docs/method.md §5.4), and Oulu-CASIA's raw frames are named ``000.jpeg``,
   ``001.jpeg``… in sequence order, which the aligned names carry over. So the image is the manifest row with
   ``subject == <subject>``, ``sequence == <expression>`` and ``frame == int(fff)``.

A line whose path has another shape, whose image is not in the manifest, or whose flags contradict its paths
(``IdentityIssame`` against the two subjects, ``Expression_actual`` against the input's expression folder) is
*unmatched*: counted with its reason, not fatal here (the stage fails above a fraction). A line that does not
follow the format at all is a :class:`ValueError` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.folds.pairs import PairSet, pair_type, pairs_frame

__all__ = ["OriginalPair", "map_original_pairs", "parse_image_path", "read_pair_file"]

_BOOL = {"True": True, "False": False}
_NAME = re.compile(r"^(?P<subject>[^/]+)/(?P<expr>[^/]+)/(?P=subject)_(?P=expr)_(?P<frame>\d+)\.\w+$")


@dataclass(frozen=True)
class OriginalPair:
    """One line of an original pair file (paths as written, expression codes as integers)."""

    row: int
    input_path: str
    reference_path: str
    is_same: bool
    expression_actual: int
    expression_required: int
    expression_ref: int
    is_required: bool
    line: int


def read_pair_file(path: str | Path) -> list[OriginalPair]:
    """Parse an original pair file (format in the module docstring). Blank lines are ignored.

    Raises:
        ValueError: no header, or a line with the wrong number of fields, a non-integer number or code, or a
            boolean other than ``True``/``False``; the message names the file and line.
    """
    path = Path(path)
    lines = [(n, text.split()) for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip()]
    if not lines or lines[0][1][0].lower().rstrip(".") != "no" or len(lines[0][1]) != 8:
        raise ValueError(f"{path}: line 1: expected the header 'No Input_img Ref_img IdentityIssame "
                         "Expression_actual Expression_require Expression_ref ExpressionIsrequire'")
    return [_parse_line(path, n, fields) for n, fields in lines[1:]]


def _parse_line(path: Path, number: int, fields: list[str]) -> OriginalPair:
    """One pair line."""
    where = f"{path}: line {number}"
    if len(fields) != 8:
        raise ValueError(f"{where}: expected 8 fields (No Input_img Ref_img IdentityIssame Expression_actual "
                         f"Expression_require Expression_ref ExpressionIsrequire), got {len(fields)}")
    no, inp, ref, same, actual, req, expr_ref, is_req = fields
    ints = []
    for name, text in (("No", no), ("Expression_actual", actual), ("Expression_require", req),
                       ("Expression_ref", expr_ref)):
        if not re.fullmatch(r"-?\d+", text):
            raise ValueError(f"{where}: {name} must be an integer, got {text!r}")
        ints.append(int(text))
    for name, text in (("IdentityIssame", same), ("ExpressionIsrequire", is_req)):
        if text not in _BOOL:
            raise ValueError(f"{where}: {name} must be True or False, got {text!r}")
    return OriginalPair(ints[0], inp, ref, _BOOL[same], ints[1], ints[2], ints[3], _BOOL[is_req], number)


def parse_image_path(path: str, prefix: str | None) -> tuple[str, str, int] | None:
    """``(subject, expression, frame)`` of an original image path, or ``None`` when it has another shape."""
    if prefix is not None:
        if not path.startswith(prefix):
            return None
        rest = path[len(prefix):].lstrip("/")
    else:
        rest = "/".join(PurePosixPath(path).parts[-3:])
    m = _NAME.match(rest)
    return (m["subject"], m["expr"], int(m["frame"])) if m else None


def map_original_pairs(
    pairs: list[OriginalPair], manifest: pd.DataFrame, classes: list[str], *, prefix: str | None
) -> PairSet:
    """Map original pairs to manifest image ids (rule in the module docstring).

    Args:
        pairs: from :func:`read_pair_file`.
        manifest: the dataset's manifest (``image_id``, ``subject``, ``sequence``, ``frame``).
        classes: the class names the file's expression codes index (the dataset's label set).
        prefix: the absolute prefix stripped from the paths.

    Returns:
        The matched pairs in file order (``row`` = the file's ``No``, ``type`` from the two flags), and the unmatched
        lines as ``(row, reason)``.

    Raises:
        ValueError: an expression code outside ``0..len(classes)-1``.
    """
    key = {(str(s), str(q), int(f)): str(i) for i, s, q, f in
           zip(manifest["image_id"], manifest["subject"], manifest["sequence"], manifest["frame"], strict=True)}
    rows: list[dict] = []
    unmatched: list[tuple[int, str]] = []
    for p in pairs:
        for name, code in (("Expression_actual", p.expression_actual), ("Expression_require", p.expression_required)):
            if not 0 <= code < len(classes):
                raise ValueError(f"line {p.line}: {name} = {code} is not a class index of {classes}")
        parsed = [parse_image_path(x, prefix) for x in (p.input_path, p.reference_path)]
        if None in parsed:
            bad = p.input_path if parsed[0] is None else p.reference_path
            want = prefix or ""
            unmatched.append((p.row, f"unexpected path: not {want}<subject>/<expr>/<subject>_<expr>_<fff>.<ext>: "
                                     f"{bad}"))
            continue
        (s_in, e_in, _), (s_ref, _, _) = parsed
        ids = [key.get(parsed[0]), key.get(parsed[1])]
        if None in ids:
            s, e, f = parsed[0] if ids[0] is None else parsed[1]
            unmatched.append((p.row, f"image not in the manifest: subject {s}, sequence {e}, frame {f}"))
        elif p.is_same != (s_in == s_ref):
            unmatched.append((p.row, f"flags contradict paths: IdentityIssame = {p.is_same} but the subjects are "
                                     f"{s_in} and {s_ref}"))
        elif classes[p.expression_actual] != e_in:
            unmatched.append((p.row, f"flags contradict paths: Expression_actual = {p.expression_actual} "
                                     f"({classes[p.expression_actual]}) but the input is a {e_in} frame"))
        else:
            rows.append({"input_id": ids[0], "reference_id": ids[1], "is_same": p.is_same,
                         "expression_actual": classes[p.expression_actual],
                         "expression_required": classes[p.expression_required], "is_required": p.is_required,
                         "type": pair_type(p.is_same, p.is_required), "row": p.row})
    return PairSet(pairs_frame(rows), unmatched=unmatched)
