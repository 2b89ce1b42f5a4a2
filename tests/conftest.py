"""Test tiers and shared checks.

Each test gets the marker of its folder (unit, integration, network, boot;
the static layer checks in tests/layer are unit tests). A test that needs a
host tool or root fails with a clear message instead of skipping: a missing
dependency must never pass silently in CI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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


def require_tool(name: str) -> str:
    """Path of a host tool, or fail: scripts/setup installs every tool the tests use."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"this test needs '{name}' (a Debian package): run scripts/setup", pytrace=False
        )
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, nftables)", pytrace=False)
