"""The suite's own layout: pytest (rootdir-relative imports, no __init__.py) cannot collect two
test modules with one basename in one run, and `make test` collects every folder at once."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
