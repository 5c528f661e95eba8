"""The repository's documentation stands alone: no pointer to a document outside the
repository, and every repository path the README and docs/ name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Spelled in pieces so that this file does not match itself. The last is the development
# machine's worktree root: a path there means nothing to whoever clones the repository.
_OUTSIDE = [re.compile(p, re.IGNORECASE) for p in (r"shared" + "/", r"DESIGN" + r"\.md",
                                                    r"design" + r"\s+map", r"/" + r"work/")]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p]


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in _tracked():
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in _OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "pointers to documents outside the repository:\n" + "\n".join(found)


_REPO_PATH = re.compile(r"`((?:docs|hdsd|bench|configs|scripts|tests)/[\w./-]*\w)`")


def test_paths_named_in_the_docs_exist() -> None:
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for ref in _REPO_PATH.findall(doc.read_text(encoding="utf-8")):
            if not (ROOT / ref).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {ref}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)
