"""The repository is its own manual: nothing in it points at a document outside it, and
every link between its Markdown pages leads to a file that exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

TEXT = {".py", ".md", ".toml", ".sh", ".conf", ".cfg", ".ini", ".txt", ".yml", ".yaml", ""}
SKIP_DIRS = {"node_modules", "__pycache__", "results"}
# Documents that lived beside the repository once, and the places they lived.
OUTSIDE = (
    "../" + "shared",
    "/work/" + "shared",
    "API" + ".md",
    "DESIGN" + ".md",
    "BASELINES" + ".md",
    "CONTAINERS" + ".md",
    "STYLE" + ".md",
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def project_files() -> Iterator[Path]:
    """Every text file of the project (not the venv, caches or data folders)."""
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        hidden = any(p.startswith(".") and p not in {".ci", ".github"} for p in parts)
        if hidden or SKIP_DIRS.intersection(parts) or not path.is_file():
            continue
        if path.suffix in TEXT and path.stat().st_size < 1_000_000:
            yield path


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in project_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {o}" for o in OUTSIDE if o in line]
    assert not found, "\n".join(found)


def test_every_link_between_pages_leads_to_a_file() -> None:
    broken = []
    for page in project_files():
        if page.suffix != ".md":
            continue
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # another site, or a place on the same page
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)
