"""docs/method.md, the description of the original code: its section numbering and the citations of it.

The repository cites sections as ``docs/method.md §N`` (lists and ranges too: ``§6.1–§6.2, §9.14``, ``§1.2–1.4``);
every cited number must be a heading of the page, and the old citations of a document outside the repository
must be gone.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

METHOD = REPO / "docs" / "method.md"

#: where citations are looked for: folders (walked) and single files
CITING = ["pipeline", "stages", "bench", "tests", "docs", "params.yaml", "dvc.yaml", "README.md"]
#: folders whose old citations must be gone
NO_OLD_CITATIONS = ["pipeline", "stages", "bench", "tests"]
#: the old citation forms, built from parts so that this file does not match them itself
OLD_CITATION = re.compile("spec" + " §" + "|" + "method" + " spec")

_SECTION = r"\d+(?:\.\d+)?"
#: a citation: the page's name, then one section, then more sections or ranges separated by "," / "–" / "-"
_CITATION = re.compile(rf"docs/method\.md\s+§(?P<first>{_SECTION})(?P<rest>(?:\s*(?:,|–|-)\s*§?{_SECTION})*)")
_MORE = re.compile(rf"(?:,|–|-)\s*§?({_SECTION})")
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".dvc", ".git"}


def _heading_numbers(text: str) -> list[str]:
    """The number of each heading: the first token after the #s, trailing dot stripped (``## 1.`` → ``1``)."""
    numbers = []
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(\S+)", line)
        if match:
            numbers.append(match.group(1).rstrip("."))
    return numbers


def _text_files(roots: list[str]):
    """(path, text) of every readable text file under the given repo-relative folders and files."""
    for root in roots:
        base = REPO / root
        if base.is_file():
            paths = [base]
        elif base.is_dir():
            paths = sorted(p for p in base.rglob("*") if p.is_file())
        else:
            paths = []
        for path in paths:
            if _SKIP_DIRS.intersection(path.relative_to(REPO).parts):
                continue
            try:
                yield path, path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def cited_sections(line: str) -> list[str]:
    """Section numbers cited on one line: each ``§`` number of a list or range that follows ``docs/method.md``."""
    sections = []
    for match in _CITATION.finditer(line):
        sections.append(match.group("first"))
        sections.extend(_MORE.findall(match.group("rest")))
    return sections


@pytest.mark.parametrize(("line", "expected"), [
    ("see docs/method.md §9.24, and the strategy", ["9.24"]),
    ("(docs/method.md §6.1–§6.2, §9.14)", ["6.1", "6.2", "9.14"]),
    ("docs/method.md §1.2–1.4", ["1.2", "1.4"]),
    ("pipeline/training; docs/method.md §1-4). One stage", ["1", "4"]),
    ("docs/method.md §2, §3, §4.1", ["2", "3", "4.1"]),
    ("docs/method.md §3, the paper", ["3"]),
    ("[docs/method.md §9.30], ", ["9.30"]),
    ("docs/method.md §4.1: 5.0", ["4.1"]),
    ("as docs/method.md §6.2 recommends.", ["6.2"]),
    ("docs/method.md §4.5 path A", ["4.5"]),
    ("the page docs/method.md itself", []),
])
def test_cited_sections_parsing(line, expected):
    assert cited_sections(line) == expected


def test_every_citation_is_a_heading():
    headings = set(_heading_numbers(METHOD.read_text(encoding="utf-8")))
    missing = []
    n_citations = 0
    for path, text in _text_files(CITING):
        for number, line in enumerate(text.splitlines(), 1):
            for section in cited_sections(line):
                n_citations += 1
                if section not in headings:
                    missing.append(f"{path.relative_to(REPO)}:{number}: §{section}")
    assert n_citations > 0
    assert not missing, "citations of sections docs/method.md does not have:\n" + "\n".join(missing)


def test_no_citations_of_the_outside_document():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path, text in _text_files(NO_OLD_CITATIONS)
             for number, line in enumerate(text.splitlines(), 1) if OLD_CITATION.search(line)]
    assert not found, "\n".join(found)


def test_section_numbering():
    text = METHOD.read_text(encoding="utf-8")
    numbers = _heading_numbers(text)
    top = [n for n in numbers if re.fullmatch(r"\d+", n)]
    assert top == [str(i) for i in range(1, 10)]
    for sub in ["1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "2.3", "4.1", "4.2", "4.3", "4.4", "4.5",
                *(f"5.{i}" for i in range(1, 9)), *(f"6.{i}" for i in range(1, 7))]:
        assert sub in numbers, sub
    items = [int(n.split(".")[1]) for n in numbers if re.fullmatch(r"9\.\d+", n)]
    assert len(items) >= 30
    assert items == list(range(1, len(items) + 1))
    assert len(numbers) == len(set(numbers)), "duplicate section numbers"


def test_page_form():
    text = METHOD.read_text(encoding="utf-8")
    long_lines = [n for n, line in enumerate(text.splitlines(), 1) if len(line) > 120]
    assert not long_lines, f"lines over 120 characters: {long_lines}"
    assert "../shared" not in text and "/work/" not in text
    for page in ("docs/deviations.md", "docs/decisions.md"):
        assert page in text
