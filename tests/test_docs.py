"""Every relative link in the project's Markdown (and in the notebooks' text cells) leads somewhere.

The benchmark reports link to each other's figures and the README links to the reports, so a
renamed report silently breaks pages that nobody re-reads. This test reads every link
``[text](target)`` or ``![alt](target)`` outside code, checks that the file exists, and, for a
``file.md#anchor`` link, that the anchor is one of that file's headings as GitHub spells it.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: folders whose Markdown is ours and committed (build outputs, caches and runs are not)
DOC_FOLDERS = ("benchmarks", "data", "noiseclr_lite", "notebooks")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _documents():
    """(path, Markdown text) of README.md, every .md under DOC_FOLDERS and every notebook's text cells."""
    paths = [ROOT / "README.md"]
    for folder in DOC_FOLDERS:
        paths += sorted(p for p in (ROOT / folder).rglob("*.md") if "cache" not in p.parts)
        paths += sorted(p for p in (ROOT / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    for path in paths:
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            yield path, "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            yield path, path.read_text()


def links(markdown: str) -> list[str]:
    """The link targets in ``markdown``, skipping fenced code blocks and inline code spans."""
    targets, in_fence = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            targets += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives ``markdown``'s headings: lower case, punctuation dropped, spaces as
    hyphens, and ``-1``, ``-2`` ... appended to repeats."""
    anchors, seen, in_fence = set(), {}, False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(path: Path, markdown: str) -> list[str]:
    """Every relative link of ``markdown`` (found in ``path``) whose file or heading does not exist."""
    broken = []
    for target in links(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


def test_the_link_reader_sees_links_and_images_but_not_code():
    markdown = "\n".join([
        "See [the report](results/a.md) and ![a figure](results/a_face.png \"title\").",
        "Not a link: `[x](inline-code.md)`.",
        "```bash",
        "echo [y](in-a-fence.md)",
        "```",
        "A [web page](https://example.org/x) and [a heading](#a-heading).",
    ])
    assert links(markdown) == ["results/a.md", "results/a_face.png", "https://example.org/x", "#a-heading"]


def test_heading_anchors_follow_github():
    markdown = "# Quality: `benchmarks/quality.py`\n## What it says, plainly\n## Notes\n## Notes\n"
    assert heading_anchors(markdown) == {"quality-benchmarksqualitypy", "what-it-says-plainly", "notes", "notes-1"}


def test_a_missing_file_and_a_missing_heading_are_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Present\n")
    page = tmp_path / "page.md"
    markdown = "[ok](other.md#present) [gone](missing.png) [no such heading](other.md#absent) [web](https://x.org)"
    broken = broken_links(page, markdown)
    assert len(broken) == 2
    assert broken[0].startswith("missing.png: no file") and "#absent" in broken[1]


@pytest.mark.parametrize("path, markdown", list(_documents()), ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path) else "")
def test_every_relative_link_in_the_project_leads_somewhere(path, markdown):
    broken = broken_links(path, markdown)
    assert not broken, f"{path.relative_to(ROOT)} has broken links (rename the link or restore the file): {broken}"
