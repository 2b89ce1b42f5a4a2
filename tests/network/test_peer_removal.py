"""Claim 12: a stolen device is cut off by removing its peer from the registry.

The hub re-reads its peers every second and applies them with `wg syncconf`,
so the removed device's tunnel is gone without a restart: from the device's
side, nothing reaches the hub any more and the agent loses its sessions,
while the other device carries on. Adding the key back restores it (the test
leaves the lab as it found it).
"""

from __future__ import annotations

import json
import sys
import time

from testbed.network.lab import Lab
from testbed.proc import run

CUT_OFF = 60.0  # the agent notices within 1.5 keepalives (10 s) plus its read timeout


def _hub(*args: str) -> str:
    return run(sys.executable, "-m", "twelvefactor_services.hub", *args)


def test_removed_peer_is_cut_off_at_the_next_sync(lab: Lab) -> None:
    root = str(lab.hub_root)
    b = lab.b
    before = {p["device"]: p for p in json.loads(_hub("peers", root))}
    assert lab.reaches_broker(b)
    _hub("remove", root, b.id)
    try:
        deadline = time.monotonic() + 10
        while b.wg_public in lab.hub_ns.exec("wg", "show", lab.hub_if, "peers"):
            assert time.monotonic() < deadline, "the hub still has the removed peer"
            time.sleep(0.2)
        assert not lab.reaches_broker(b), "the removed device still reaches the broker"
        deadline = time.monotonic() + CUT_OFF
        while b.status()["management"] == "online":
            assert time.monotonic() < deadline, f"{b.id} still online: {b.status()}"
            time.sleep(0.5)
        assert lab.a.status()["management"] == "online"
        assert lab.reaches_broker(lab.a)
    finally:
        _hub("peer", root, b.id, b.wg_public)
    after = {p["device"]: p for p in json.loads(_hub("peers", root))}
    assert after[b.id] == before[b.id], "the re-added peer got other addresses"
    lab.wait_online(b, timeout=120)
