"""Fixtures of the network tier: one lab (namespaces, hub, two devices) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import require_root, require_tool

from testbed.network.lab import Lab, make_lab, remove

TOOLS = ("ip", "nft", "wg", "wireguard-go", "nmap", "tcpdump", "mosquitto", "faketime", "ntpdig")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    require_root()
    for tool in TOOLS:
        require_tool(tool)
    lab, root = make_lab()
    lab.start()
    try:
        yield lab
    finally:
        lab.close()
        remove(root)
