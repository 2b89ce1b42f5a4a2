"""Claim 12: a stolen device is cut off by removing its peer from the registry.

The hub re-reads its peers every second and applies them with `wg syncconf`,
so the removed device's tunnel is gone without a restart: from the device's
side, nothing reaches the hub any more and the agent loses its sessions,
while the other device carries on. Adding the key back restores it (the test
leaves the lab as it found it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from device import Device
from lab import Lab
from netlab import run

CUT_OFF = 60.0  # the agent notices within 1.5 keepalives (10 s) plus its read timeout


def _hub(*args: str) -> str:
    return run(sys.executable, "-m", "twelvefactor_services.hub", *args)


def _reaches(lab: Lab, dev: Device, port: int) -> bool:
    """Can `dev` open a TCP connection to the hub's tunnel address?"""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({lab.hub_info['address_v4']!r}, {port}), 3).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    done = subprocess.run(dev.ns.argv(sys.executable, "-c", code), check=False)
    return done.returncode == 0


def test_removed_peer_is_cut_off_at_the_next_sync(lab: Lab) -> None:
    root = str(lab.hub_root)
    b = lab.b
    port = int(lab.hub_info["management_port"])
    before = {p["device"]: p for p in json.loads(_hub("peers", root))}
    assert _reaches(lab, b, port)
    _hub("remove", root, b.id)
    try:
        deadline = time.monotonic() + 10
        while b.wg_public in lab.hub_ns.exec("wg", "show", lab.hub_if, "peers"):
            assert time.monotonic() < deadline, "the hub still has the removed peer"
            time.sleep(0.2)
        assert not _reaches(lab, b, port), "the removed device still reaches the broker"
        deadline = time.monotonic() + CUT_OFF
        while b.status()["management"] == "online":
            assert time.monotonic() < deadline, f"{b.id} still online: {b.status()}"
            time.sleep(0.5)
        assert lab.a.status()["management"] == "online"
        assert _reaches(lab, lab.a, port)
    finally:
        _hub("peer", root, b.id, b.wg_public)
    after = {p["device"]: p for p in json.loads(_hub("peers", root))}
    assert after[b.id] == before[b.id], "the re-added peer got other addresses"
    lab.wait_online(b, timeout=120)
