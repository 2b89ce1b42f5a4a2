"""Test tiers and shared checks.

Each test gets the marker of its folder (unit, integration, network, boot;
the static layer checks in tests/layer are unit tests). A test that needs a
host tool or root fails with a clear message instead of skipping: a missing
dependency must never pass silently in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import require_root, require_tool

__all__ = ["require_root", "require_tool"]

ROOT = Path(__file__).resolve().parent.parent
TIER_OF_FOLDER = {
    "unit": "unit",
    "layer": "unit",
    "integration": "integration",
    "network": "network",
    "boot": "boot",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        tier = TIER_OF_FOLDER.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if tier is None:
            raise pytest.UsageError(f"{rel}: tests live in one of {sorted(TIER_OF_FOLDER)}")
        item.add_marker(getattr(pytest.mark, tier))


# The boot tier's options live here, in the top conftest: pytest only takes options
# from conftests it loads before collecting, so `scripts/test -m boot --image X` works.
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("boot", "boot tier (QEMU)")
    group.addoption(
        "--image",
        type=Path,
        default=None,
        help="disk image to boot (default: build the reference image)",
    )
    group.addoption(
        "--accel",
        default="tcg",
        choices=["tcg", "kvm"],
        help="QEMU accelerator (default tcg: the CI machines have no KVM)",
    )
