"""The README's links lead somewhere: it sits outside mkdocs' docs directory, so `mkdocs build
--strict` does not check it. Every relative link names a file of the repository, and every
`#anchor` into a Markdown page names one of that page's headings (as mkdocs makes their ids)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """Python-Markdown's toc slugify, on the heading's text (code spans as their text)."""
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    headings, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            headings.add(_slug(line.lstrip("#").strip()))
    return headings


def test_every_relative_link_and_anchor_of_the_readme_resolves() -> None:
    links = [target for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
             if "://" not in target and not target.startswith("mailto:")]
    assert len(links) > 20  # the command table and the docs are linked
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else ROOT / "README.md"
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and page.suffix == ".md" and anchor not in _anchors(page):
            broken.append(f"{target}: no heading '{anchor}' in {path or 'README.md'}")
    assert broken == []


def test_the_slug_is_mkdocs_own() -> None:
    assert _slug("`webinar-flows send`") == "webinar-flows-send"
    assert _slug("Content modes (CloudEvents HTTP binding 1.0.2)") == "content-modes-cloudevents-http-binding-102"
    assert _slug("The keys file") == "the-keys-file"
