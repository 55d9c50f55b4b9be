"""The documentation's links hold: every relative link and picture in README.md and docs/*.md names a
file of the repository (and each #anchor a heading of its page), and the README links every page of docs/."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def prose(page: Path) -> str:
    """The page without its code blocks and inline code, where brackets are code, not links."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines() if line.startswith("#")}


def broken(page: Path) -> list[str]:
    """The links of `page` that point nowhere: a missing file, or an anchor that is no heading there."""
    found = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        outside = not destination.exists() or ROOT not in (destination, *destination.parents)
        if outside or (fragment and destination.suffix == ".md" and fragment not in anchors(destination)):
            found.append(target)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_picture_resolves(page: Path) -> None:
    assert broken(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = ROOT / "docs" / "room.md"  # the checker on a real page's place in the tree, with made-up links
    fake = page.with_name("__link_check__.md")
    fake.write_text(
        "# Here\n[ok](room.md) [ok](#here) [ok](../README.md#command-line) ![gone](screenshots/none.png) [gone](nowhere.md)"
        " [bad anchor](room.md#no-such-heading) `[code](not-a-link.md)` [web](https://example.com/x)\n",
        encoding="utf-8",
    )
    try:
        assert broken(fake) == ["screenshots/none.png", "nowhere.md", "room.md#no-such-heading"]
    finally:
        fake.unlink()
