"""Test modules have unique names across the tree: tests are collected
without packages (rootdir-relative basenames), so a second module of the
same name stops the whole run with "import file mismatch"."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_name() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == []
