"""A device whose clock was years ahead, then put right, is not locked out.

WireGuard keeps the newest handshake time stamp it accepted from a peer and
refuses any initiation not newer (replay protection). A device that once
handshook with a clock years ahead, then had its clock corrected by NTP
(inside the tunnel), sends stamps the hub refuses until that far-off date,
and without the tunnel it cannot reach the NTP that would help. The hub
forgets the handshake state of a peer that has gone quiet (hub/stale.py);
this is that case, end to end: device B's own key signs an initiation
stamped nine years ahead (the hub answers it), then B's real WireGuard,
on the right time, has to handshake again.
"""

from __future__ import annotations

import json
import sys
import time

from testbed.network.lab import HUB_UNDERLAY, STALE_AFTER, WG_PORT, Lab

NINE_YEARS = 9 * 365 * 86400
INITIATION = 148  # bytes of a WireGuard handshake initiation


def _forge_from_the_future(lab: Lab) -> bool:
    """Send B's initiation stamped nine years ahead (from the attacker's namespace,
    which has no firewall: the hub takes a known key from any address)."""
    code = f"""
import json, socket, time
from testbed.network import wg_forge
sender, message = wg_forge.initiation(
    {lab.b.wg_private!r}, {lab.hub_info["public_key"]!r}, when=time.time() + {NINE_YEARS}
)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(message, ({HUB_UNDERLAY[0]!r}, {WG_PORT}))
try:
    answered = wg_forge.answers(s.recvfrom(2048)[0], sender)
except TimeoutError:
    answered = False
print(json.dumps(answered))
"""
    out = lab.inet.exec(sys.executable, "-c", code)
    return bool(json.loads(out))


def _hub_peer(lab: Lab) -> tuple[int, int, int]:
    """B's view of its hub peer: (latest handshake, bytes received, bytes sent)."""
    peer = lab.b.wg("show", "dump").splitlines()[1].split("\t")
    return int(peer[4]), int(peer[5]), int(peer[6])


def test_a_stamp_from_the_future_locks_out_only_until_the_hub_forgets(lab: Lab) -> None:
    b = lab.b
    assert lab.reaches_broker(lab.b)
    forged_at = time.monotonic()
    assert _forge_from_the_future(lab), "the hub did not answer B's initiation"
    forge_s = time.monotonic() - forged_at
    # B's clock is right again: its next handshake carries today's stamp
    b.drop_session()
    started = time.monotonic()
    # B's first initiation and two of WireGuard's 5 s retries, none answered (each
    # initiation is 148 bytes; a re-added peer starts from zero)
    budget = max(60.0, 20 * forge_s)  # the retry timer is fixed; the floor covers it
    while True:
        handshake, received, sent = _hub_peer(lab)
        assert (handshake, received) == (0, 0), "the hub answered a stamp older than its last"
        if sent >= 3 * INITIATION:
            break
        assert time.monotonic() - started < budget, f"B sent {sent} bytes in {budget:.0f} s"
        time.sleep(0.2)
    assert not lab.reaches_broker(lab.b), "the hub took a stamp older than one it had accepted"
    assert "forgot the handshake state" not in lab.hub_log()
    # the hub forgets B after STALE_AFTER seconds without a packet from it
    deadline = started + STALE_AFTER + 60
    while not lab.reaches_broker(lab.b):
        assert time.monotonic() < deadline, f"B still locked out:\n{lab.hub_log()}"
        time.sleep(1)
    waited = time.monotonic() - started
    print(f"B locked out for {waited:.0f} s (the hub forgets after {STALE_AFTER:.0f} s quiet)")
    assert waited >= STALE_AFTER - 15
    assert f"forgot the handshake state of {b.id}" in lab.hub_log()
    lab.wait_online(b)
    assert lab.a.status()["management"] == "online"
