"""The documentation holds together: a short README that links every page, and no dead relative link.

Checked files: ``README.md``, ``docs/*.md`` and ``reports/benchmarks.md``. A relative link must name an existing
file or folder; an anchor (``#...``) into a markdown file must be the GitHub slug of one of its headings.
``docs/method.md`` (the original code's behaviour) must be linked from the README like every page; while it is not
written yet only its existence check is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
METHOD = DOCS / "method.md"
MAX_README_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"(`+).+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def checked_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), REPO / "reports" / "benchmarks.md"]


def strip_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links and headings there are not real)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    """Every link target of a markdown file, in order, outside code."""
    return _LINK.findall(strip_code(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation except ``-`` dropped, spaces -> ``-``.

    Word characters (letters, digits, ``_``) are kept, as GitHub keeps them.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (a repeated slug gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, title in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def dead_links(path: Path, root: Path = REPO) -> list[str]:
    """The relative links of ``path`` that point nowhere or out of ``root``, as ``target: why``."""
    dead = []
    for target in links(path):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        if file_part.startswith("/"):
            dead.append(f"{target}: absolute path")
            continue
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.exists():
            if dest == METHOD:
                continue  # written by a colleague; test_method_page_exists reports it
            dead.append(f"{target}: no such file or folder")
            continue
        if root.resolve() not in (dest, *dest.parents):
            dead.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target}: no heading with anchor #{anchor}")
    return dead


def readme_targets() -> set[Path]:
    """The files and folders the README links to (anchors dropped)."""
    out = set()
    for target in links(README):
        file_part = target.partition("#")[0]
        if file_part and not _SCHEME.match(file_part):
            out.add((README.parent / file_part).resolve())
    return out


# --- the helpers themselves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("heading", "expected"), [
    ("Two commands", "two-commands"),
    ("The report: the paper's table", "the-report-the-papers-table"),
    ("Detect faces in any image: `python -m stages detect`", "detect-faces-in-any-image-python--m-stages-detect"),
    ("Fine-tuning training step (`bench/train.py`)", "fine-tuning-training-step-benchtrainpy"),
    ("The whole demo (`make demo`, 2-core CPU)", "the-whole-demo-make-demo-2-core-cpu"),
    ("9.1 Identity classifier", "91-identity-classifier"),
    ("What **you** get", "what-you-get"),
])
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_link_and_anchor_parsing(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Part one\n\n## Part one\n\n"
        "[ok](#part-one) [ok too](#part-one-1) [self](page.md#title) [web](https://example.org/x)\n"
        "[bad anchor](#part-two) [missing](nope.md) `[in code](nope2.md)`\n\n"
        "```\n[in a fence](nope3.md)\n# not a heading\n```\n",
        encoding="utf-8",
    )
    assert anchors(page) == {"title", "part-one", "part-one-1"}
    assert links(page) == ["#part-one", "#part-one-1", "page.md#title", "https://example.org/x", "#part-two",
                           "nope.md"]
    assert sorted(dead_links(page, root=tmp_path)) == ["#part-two: no heading with anchor #part-two",
                                        "nope.md: no such file or folder"]


# --- the documentation ---------------------------------------------------------------------------------------


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_readme_links_every_docs_page() -> None:
    pages = {p.resolve() for p in DOCS.iterdir() if p.is_file() and p.suffix in {".md", ".yaml"}}
    pages |= {METHOD.resolve(), (DOCS / "paper_params.yaml").resolve()}
    missing = sorted(str(p.relative_to(REPO.resolve())) for p in pages - readme_targets())
    assert not missing, f"pages not linked from README.md: {missing}"


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    """Following relative links from the README reaches every file under docs/."""
    seen: set[Path] = set()
    todo = [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        if page.suffix == ".md":
            for target in links(page):
                file_part = target.partition("#")[0]
                if file_part and not _SCHEME.match(file_part):
                    todo.append((page.parent / file_part).resolve())
    unreachable = sorted(str(p.relative_to(REPO)) for p in DOCS.rglob("*") if p.is_file() and p.resolve() not in seen)
    assert not unreachable, f"docs files no link path from README.md reaches: {unreachable}"


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_dead_relative_links(path: Path) -> None:
    dead = dead_links(path)
    assert not dead, f"{path.relative_to(REPO)}: dead links: {dead}"


def test_no_reference_outside_the_repository() -> None:
    """Docs cite ``docs/method.md §N``, never the spec folder beside the project."""
    bad = [str(p.relative_to(REPO)) for p in checked_files() if "../shared" in p.read_text(encoding="utf-8")]
    assert not bad, f"files that refer to ../shared: {bad}"


def test_method_page_exists() -> None:
    if not METHOD.exists():
        pytest.skip("docs/method.md is not written yet")
    assert METHOD.read_text(encoding="utf-8").strip(), "docs/method.md is empty"
