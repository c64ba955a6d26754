"""Compare the demo outputs of two checkouts: is a change bit-identical, and where is it not?

Run both checkouts' ``dvc repro`` (``make demo``) **on the same machine** (outputs depend on the CPU model,
``docs/task_sets.md``), then::

    .venv/bin/python -m bench.compare_outputs OLD_REPO NEW_REPO [--expect gradnorm] [--json out.json]

What is compared:

- every out of both ``dvc.lock`` files, by path (stage names may differ): equal md5 = identical. A directory out
  whose md5 differs is compared file by file from the working trees;
- every file under ``metrics/`` and ``reports/`` of both trees, byte for byte; for a text file the first
  differing lines are shown;
- files that differ get a closer look: ``steps.csv`` is identical in substance when every column of the old file
  is identical in the new one (the new one may add columns, e.g. ``present_<task>``); ``model.pt`` when every
  tensor of the old checkpoint's state equals the new one's (the stored config may be written differently).

A path that contains one of the ``--expect`` substrings (a method whose results a change is meant to alter) is
reported as an expected difference, and so is a file that holds every method's results when only its parts naming
an expected substring differ (case-insensitive): the differing lines of a text file (a table row, a CSV row), or
the differing values of a JSON file (by their key path). Exit status 1 when anything else differs or a file is
missing on one side.
Needs pandas and torch (both in the project's environment).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

__all__ = ["Finding", "compare_repos", "main"]

#: the working-tree folders compared byte for byte besides the dvc.lock outs
TRACKED_TREES = ("metrics", "reports")
#: the number of differing lines shown per text file
SHOWN_LINES = 3
_MISSING = object()


@dataclass(frozen=True)
class Finding:
    """One compared path.

    Attributes:
        path: relative to the repository root.
        verdict: ``identical`` | ``same tensors`` | ``old columns identical`` | ``differs`` | ``expected`` |
            ``only old`` | ``only new`` | ``in neither tree`` (a stale ``dvc.lock`` entry: its out exists in
            neither working tree).
        detail: what differs (columns added, differing lines, tensor names), or "".
    """

    path: str
    verdict: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether this finding keeps the comparison green."""
        return self.verdict not in ("differs", "only old", "only new")


def _lock_outs(repo: Path) -> dict[str, str]:
    """``{out path: md5}`` over every stage of ``repo/dvc.lock``."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}


def _files(root: Path) -> dict[str, Path]:
    """Every file below ``root`` (a file itself → ``{"": root}``), by path relative to ``root``."""
    if root.is_file():
        return {"": root}
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _lines_diff(a: list[str], b: list[str]) -> str:
    """The first differing lines of two texts (and a changed line count)."""
    lines = [f"line {i + 1}: {x!r} -> {y!r}" for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    if len(a) != len(b):
        lines.append(f"{len(a)} -> {len(b)} lines")
    shown = "; ".join(lines[:SHOWN_LINES])
    return shown + (f"; … {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else "")


def _compare_steps(old: Path, new: Path) -> str | None:
    """``steps.csv``: the detail when every old column is identical in the new file (as text), else None."""
    import pandas as pd

    a = pd.read_csv(old, dtype=str, keep_default_na=False)
    b = pd.read_csv(new, dtype=str, keep_default_na=False)
    if any(c not in b.columns for c in a.columns) or len(a) != len(b):
        return None
    if not all(a[c].equals(b[c]) for c in a.columns):
        return None
    added = [c for c in b.columns if c not in a.columns]
    return f"added: {', '.join(added)}" if added else ""


def _leaves(value: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted key path, value)`` of every leaf of nested dicts, lists and tuples."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _leaves(v, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, value


def _compare_checkpoints(old: Path, new: Path) -> str | None:
    """``model.pt``: the detail when both hold the same tensor names with equal values (dtype, shape and every
    element), else None."""
    import torch

    def tensors(path: Path) -> dict[str, torch.Tensor]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v for k, v in _leaves(state) if isinstance(v, torch.Tensor)}

    a, b = tensors(old), tensors(new)
    if a.keys() != b.keys():
        return None
    if any(a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
        return None
    return f"{len(a)} tensors equal; the rest of the file differs"


def _named(text: str, expect: Sequence[str]) -> bool:
    return any(e.lower() in text.lower() for e in expect)


def _only_expected_parts(suffix: str, a_text: str, b_text: str, expect: Sequence[str]) -> str | None:
    """What differs, when every differing JSON value (by key path) or text line names an expected substring; else
    None."""
    if not expect:
        return None
    if suffix == ".json":
        a, b = dict(_leaves(json.loads(a_text))), dict(_leaves(json.loads(b_text)))
        keys = [k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING)]
        if all(_named(k, expect) for k in keys):
            return f"{len(keys)} values differ, each under a key naming {'/'.join(expect)}"
        return None
    a_lines, b_lines = a_text.splitlines(), b_text.splitlines()
    if len(a_lines) != len(b_lines):
        return None
    pairs = [(x, y) for x, y in zip(a_lines, b_lines, strict=True) if x != y]
    if all(_named(x, expect) and _named(y, expect) for x, y in pairs):
        return f"{len(pairs)} lines differ, each naming {'/'.join(expect)}"
    return None


def _compare_file(rel: str, old: Path, new: Path, expect: Sequence[str]) -> Finding:
    if filecmp.cmp(old, new, shallow=False):
        return Finding(rel, "identical")
    if old.name == "steps.csv" and (detail := _compare_steps(old, new)) is not None:
        return Finding(rel, "old columns identical", detail)
    if old.suffix == ".pt" and (detail := _compare_checkpoints(old, new)) is not None:
        return Finding(rel, "same tensors", detail)
    try:
        a_text, b_text = old.read_text(), new.read_text()
    except UnicodeDecodeError:
        return Finding(rel, "expected" if _named(rel, expect) else "differs",
                       f"binary, {old.stat().st_size} -> {new.stat().st_size} bytes")
    if _named(rel, expect):
        return Finding(rel, "expected", _lines_diff(a_text.splitlines(), b_text.splitlines()))
    parts = _only_expected_parts(old.suffix, a_text, b_text, expect)
    if parts is not None:
        return Finding(rel, "expected", parts)
    return Finding(rel, "differs", _lines_diff(a_text.splitlines(), b_text.splitlines()))


def _compare_tree(rel: str, old: Path, new: Path, expect: Sequence[str]) -> list[Finding]:
    a, b = _files(old), _files(new)
    findings = []
    for sub in sorted(a.keys() | b.keys()):
        path = f"{rel}/{sub}" if sub else rel
        if sub not in b:
            findings.append(Finding(path, "expected" if _named(path, expect) else "only old"))
        elif sub not in a:
            findings.append(Finding(path, "expected" if _named(path, expect) else "only new"))
        else:
            findings.append(_compare_file(path, a[sub], b[sub], expect))
    return findings


def compare_repos(old: Path, new: Path, expect: Sequence[str] = ()) -> list[Finding]:
    """Compare the outs of ``old`` and ``new`` (two checkouts after ``dvc repro``); one finding per file, and one
    per identical out."""
    old_outs, new_outs = _lock_outs(old), _lock_outs(new)
    findings: list[Finding] = []
    for path in sorted(old_outs.keys() | new_outs.keys()):
        top = path.split("/", 1)[0]
        if top in TRACKED_TREES:
            continue  # compared below with the rest of those trees
        if not (old / path).exists() and not (new / path).exists():
            findings.append(Finding(path, "in neither tree", "a lock entry of a stage that was not run"))
        elif path not in new_outs or path not in old_outs:
            verdict = "only old" if path in old_outs else "only new"
            findings.append(Finding(path, "expected" if _named(path, expect) else verdict))
        elif old_outs[path] == new_outs[path]:
            findings.append(Finding(path, "identical"))
        else:
            findings.extend(_compare_tree(path, old / path, new / path, expect))
    for tree in TRACKED_TREES:
        findings.extend(_compare_tree(tree, old / tree, new / tree, expect))
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="the checkout before the change, after dvc repro")
    ap.add_argument("new", type=Path, help="the checkout with the change, after dvc repro on the same machine")
    ap.add_argument("--expect", action="append", default=[],
                    help="a path substring whose differences are expected (repeatable), e.g. gradnorm")
    ap.add_argument("--json", type=Path, help="also write every finding here")
    ap.add_argument("--all", action="store_true", help="list identical paths too")
    args = ap.parse_args(argv)
    for repo in (args.old, args.new):
        if not (repo / "dvc.lock").is_file():
            print(f"error: {repo}/dvc.lock not found: run dvc repro there first", file=sys.stderr)
            return 2
    findings = compare_repos(args.old, args.new, args.expect)
    width = max(len(f.path) for f in findings)
    for f in findings:
        if args.all or f.verdict != "identical":
            print(f"{f.verdict:<22} {f.path:<{width}}  {f.detail}".rstrip())
    counts = Counter(f.verdict for f in findings)
    bad = sum(not f.ok for f in findings)
    print("summary: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) +
          (f" -> {bad} unexpected" if bad else " -> no unexpected difference"))
    if args.json:
        args.json.write_text(json.dumps({"old": str(args.old), "new": str(args.new), "expect": args.expect,
                                         "summary": counts, "findings": [asdict(f) for f in findings]}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
