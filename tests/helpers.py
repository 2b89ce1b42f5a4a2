"""Checks shared by every tier: a missing host tool or root fails, never skips.

scripts/setup installs every tool the tests use, so in CI a missing one is a
broken set-up that must show, not a silently smaller test run.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of a host tool, or fail with the package hint."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"this test needs '{name}' (a Debian package): run scripts/setup", pytrace=False
        )
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, nftables)", pytrace=False)


# The smallest valid agent configuration (device dev-001, hub at 10.77.0.1):
# the base the agent's unit and fuzz tests add their own keys to.
MINIMAL_AGENT_CONFIG = """
[device]
id = "dev-001"
certificate = "/data/identity/device.crt"
key = "/data/identity/device.key"
ca = "/data/identity/ca.crt"
[management]
host = "10.77.0.1"
[solution]
host = "10.77.0.1"
"""
