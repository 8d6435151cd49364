"""Every relative link of the README and the docs leads somewhere: the file exists and, where the link names a
heading (#anchor), the file has that heading (GitHub's anchor rule). The README is a tour that points into
docs/ (issue 23), so a moved section must not leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.relative_to(REPO).as_posix()
                                                      for p in (REPO / "docs").glob("*.md"))])
def test_every_relative_link_resolves(doc):
    source = REPO / doc
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
    dead = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked (no network at test time)
        path, _, frag = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            dead.append(target)
        elif frag and file.suffix == ".md" and frag not in anchors(file):
            dead.append(target)
    assert not dead, f"{doc}: {dead}"


def test_the_anchor_rule():
    assert anchor(" The quick study (`flags/quick.flags`)") == "the-quick-study-flagsquickflags"
    assert anchor(" The run folder's life: resuming, one configuration, bad input") == \
        "the-run-folders-life-resuming-one-configuration-bad-input"
