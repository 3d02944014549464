"""`make test-fast`'s subset stays what it says: conftest's HEAVY table names tests that exist,
and the markers it selects by are registered."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import HEAVY

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def defined_tests(path: Path) -> set[str]:
    """Return the names of the test functions defined at the top level of a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")}


def test_every_heavy_entry_names_a_test_that_exists():
    stale = {}
    for file, names in HEAVY.items():
        path = TESTS / file
        missing = sorted(names) if not path.is_file() else sorted(set(names) - defined_tests(path))
        if missing:
            stale[file] = missing
    assert not stale, (f"tests/conftest.py's HEAVY names tests that do not exist (renamed or removed?): {stale}; "
                       "update the table so that make test-fast still leaves out what is heavy")


def test_the_markers_make_test_fast_selects_by_are_registered(pytestconfig):
    markers = pytestconfig.getini("markers")
    assert {m.split(":")[0] for m in markers} >= {"slow", "heavy"}
    makefile = (ROOT / "Makefile").read_text()
    assert '-m "not slow and not heavy"' in makefile
