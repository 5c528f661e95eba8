"""The import contract: the layers of docs/architecture.md, held by a test.

Each package of ``hdsd`` has a rank; a module may import from packages of a strictly lower rank
and from the foundation modules at the package root (``hdsd._errors``, ``_groups``,
``_atomic``, ``_meta``, ``_packing``, ``_deadline``, ``_alloc``, ``_turns``). Nothing imports
sideways or upwards, and no module reaches into another package's private modules or names: it
uses what that package's ``__init__`` re-exports.

``DEBTS`` listed the crossings that existed when this test was written; they are all paid, and
the set stays empty: the test fails when a new crossing appears *and* when a listed one is gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hdsd

PACKAGE = Path(hdsd.__file__).parent

RANKS = {
    "wire": 0, "pipeline": 0,
    "store": 1, "cluster": 1,
    "transport": 2,
    "peers": 3,
    "catalog": 4, "replication": 4,
    "repair": 5, "audit": 5, "s3": 5,
    "node": 6, "client": 6,
    "cli": 7,
}
FOUNDATION = {"_errors", "_groups", "_atomic", "_meta", "_packing", "_deadline", "_alloc",
              "_turns"}

# (importing module, imported module, name): private crossings tolerated (none; see the docstring).
DEBTS: set[tuple[str, str, str]] = set()


def _imports() -> list[tuple[str, str, list[str], list[str]]]:
    """(module path, importing package, target module parts, imported names) of every
    relative or ``hdsd.`` import in the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        parts = list(rel.parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                    target = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "hdsd":
                    target = node.module.split(".")[1:]
                else:
                    continue
                out.append((rel.as_posix(), parts[0] if parts else "",
                            target, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "hdsd":
                        out.append((rel.as_posix(), parts[0] if parts else "",
                                    alias.name.split(".")[1:], []))
    return out


def _crossings() -> tuple[list[str], set[tuple[str, str, str]]]:
    arrows: list[str] = []
    private: set[tuple[str, str, str]] = set()
    for module, package, target, names in _imports():
        if not package or not target:
            continue  # the package root re-exports; it may import anything
        head = target[0]
        if head in FOUNDATION or head == package:
            continue
        if head not in RANKS:
            arrows.append(f"{module} imports unknown hdsd.{'.'.join(target)}")
            continue
        if RANKS[head] >= RANKS[package]:
            arrows.append(f"{module} ({package}, rank {RANKS[package]}) imports "
                          f"{'.'.join(target)} ({head}, rank {RANKS[head]})")
        dotted = ".".join(target)
        if any(p.startswith("_") for p in target[1:]):
            private.update((module, dotted, n) for n in names or ["*"])
        private.update((module, dotted, n) for n in names if n.startswith("_"))
    return arrows, private


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in PACKAGE.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(RANKS)


def test_imports_point_down_only() -> None:
    arrows, _ = _crossings()
    assert arrows == []


def test_no_new_private_crossings_and_the_debts_list_is_current() -> None:
    _, private = _crossings()
    assert private - DEBTS == set(), "use the package's public names instead"
    assert DEBTS - private == set(), "these debts were paid: remove them from DEBTS"
