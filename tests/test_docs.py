"""README's and docs/'s lists and tables that have a source agree with it (python -m daamlib.docs --check), and
the links between the pages resolve."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_blocks_match_their_sources():
    from daamlib.docs import files, main

    assert main(["--check"]) == 0, "run `python -m daamlib.docs` and commit the result"
    names = {m for f in files() for m in re.findall(r"<!-- generated: (\w+) ", f.read_text())}
    assert {"models", "families", "paper", "gpu", "threads", "depth"} <= names


def test_every_registered_name_and_family_is_in_the_docs():
    """The lists that went stale before (10 of 14 names, "all three families") cannot: each name appears."""
    from daamlib import models
    from daamlib.dit.registry import families

    text = "\n".join(f.read_text() for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    assert not [n for n in models.registered() if f"`{n}`" not in text]
    assert not [f.name for f in families() if f"`tiny-{f.name}`" not in text]


def test_links_between_the_pages_resolve():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_first_part_is_short():
    """What, two commands, a picture, JupyterLab, threads, the API in short and where to go next: ≤ 150 lines."""
    lines = (REPO / "README.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## Notebooks"))
    assert first <= 150, first
