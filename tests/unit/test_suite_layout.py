"""The suite's own layout: what pytest's default import mode needs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_module_has_a_unique_basename() -> None:
    # The test folders have no __init__.py, so pytest imports each module by
    # its basename: a second file of the same name stops the whole run at
    # collection ("import file mismatch"), even when each tier passes alone.
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test modules sharing a basename: {clashes}"
