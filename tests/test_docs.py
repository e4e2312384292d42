"""The docs stay true to the tree: the code map, the theory-of-operation index, paths and links.

docs/architecture.md is how a newcomer finds the parser, the queue rules, the journal and the
worker loop. It is written by hand, so it is checked the way `make conf-check` checks conf/:
a module added, moved or removed without its line in the code map fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ARCHITECTURE = REPO / "docs" / "architecture.md"


def section(text: str, heading: str) -> str:
    """The body of `## heading`, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"docs/architecture.md has no '## {heading}' section"
    return match.group(1)


def first_column_paths(table: str) -> set[str]:
    """The `path` in the first cell of each table row."""
    return set(re.findall(r"^\| `([^`]+\.py)` \|", table, re.M))


def modules() -> set[str]:
    return {p.relative_to(REPO).as_posix() for p in (REPO / "kestrelq").rglob("*.py")}


def test_code_map_names_every_module_and_only_those() -> None:
    mapped = first_column_paths(section(ARCHITECTURE.read_text(), "Code map"))
    existing = modules()
    # A package's __init__.py is a line of its own only when it holds something worth saying.
    required = {m for m in existing if not m.endswith("/__init__.py")}
    unknown, missing = sorted(mapped - existing), sorted(required - mapped)
    assert not unknown, f"the code map names modules that do not exist: {unknown}"
    assert not missing, f"modules missing from the code map: {missing}"


def test_theory_of_operation_index_is_complete() -> None:
    text = ARCHITECTURE.read_text()
    indexed = first_column_paths(section(text, "Theory of operation: an index"))
    with_block = {m for m in modules() if "theory of operation" in (REPO / m).read_text().lower()}
    unknown, missing = sorted(indexed - with_block), sorted(with_block - indexed)
    assert not unknown, f"indexed without a theory-of-operation block: {unknown}"
    assert not missing, f"theory-of-operation blocks missing from the index: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_point_at_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


# A path in backquotes, in one of the repository's own directories. Patterns (`*`, `<n>`) and
# paths under var/ (made at run time) are not checked.
_PATH = re.compile(r"`((?:kestrelq|tests|bench|app|images|scripts|conf|docs|\.ci)/[\w./+-]*)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_paths_named_in_docs_exist(doc: Path) -> None:
    missing = sorted(
        p for p in set(_PATH.findall(doc.read_text())) if not (REPO / p.rstrip("/")).exists()
    )
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
