"""Claim 3, spoofed: packets that claim the hub's address and port but carry
another WireGuard key get no answer.

The device's firewall lets in UDP from the hub's address and port to its
WireGuard port, so an attacker on the underlay who forges that source reaches
WireGuard itself. The attacker here is a real WireGuard interface with its
own key, the device's public key as its peer, and its handshake initiations
source-NATed to the hub's address: the device must send no handshake
response (message type 2) and no cookie reply (type 3) to any of them,
and its own tunnel stays up.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.network.lab import DEVICES, HUB_UNDERLAY, WG_PORT, Lab
from testbed.network.probes import Capture, ping, udp_payloads
from testbed.proc import run, stop

INITIATION, RESPONSE, COOKIE_REPLY = 1, 2, 3
ATTACKER_TUNNEL_ADDRESS = "10.99.0.250/32"


class Attacker:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.name = f"tnx{lab.tag}"
        key = work / "attacker.key"
        key.write_text(run("wg", "genkey"))
        key.chmod(0o600)
        self.proc = lab.inet.popen(["wireguard-go", "-f", self.name], work / "attacker-wg.log")
        lab.inet.wait_link(self.name, self.proc)
        a_underlay = DEVICES[lab.a.id][0]
        lab.inet.exec(
            "wg", "set", self.name, "private-key", str(key), "listen-port", str(WG_PORT),
            "peer", lab.a.wg_public, "endpoint", f"{a_underlay}:{WG_PORT}",
            "allowed-ips", lab.tunnel_address(lab.a.id) + "/32",
        )  # fmt: skip
        lab.inet.ip("addr", "add", ATTACKER_TUNNEL_ADDRESS, "dev", self.name)
        lab.inet.ip("link", "set", self.name, "up")
        lab.inet.ip("route", "replace", lab.tunnel_address(lab.a.id) + "/32", "dev", self.name)
        # the forgery: every datagram to the device's WireGuard port leaves with
        # the hub's source address (the source port is the hub's already)
        rules = (
            "table ip tfspoof {\n chain post {\n"
            "  type nat hook postrouting priority srcnat; policy accept;\n"
            f"  ip daddr {a_underlay} udp dport {WG_PORT} snat to {HUB_UNDERLAY[0]}\n"
            " }\n}\n"
        )
        lab.inet.exec("nft", "-f", "-", input_text=rules)

    def knock(self, seconds: float) -> None:
        """Send traffic into the attacker's tunnel: WireGuard initiates handshakes."""
        ping(self.lab.inet, self.lab.tunnel_address(self.lab.a.id), int(seconds))

    def close(self) -> None:
        self.lab.inet.exec("nft", "delete", "table", "ip", "tfspoof", check=False)
        self.lab.inet.ip("route", "del", self.lab.tunnel_address(self.lab.a.id) + "/32")
        stop(self.proc)


@pytest.fixture
def attacker(lab: Lab, tmp_path: Path) -> Iterator[Attacker]:
    att = Attacker(lab, tmp_path)
    try:
        yield att
    finally:
        att.close()


def _index(payload: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", payload, at)[0])


def test_forged_hub_source_with_another_key_gets_no_handshake(
    lab: Lab, attacker: Attacker, tmp_path: Path
) -> None:
    a_underlay = DEVICES[lab.a.id][0]
    hub = HUB_UNDERLAY[0]
    inet_mac = json.loads(lab.inet.ip("-j", "link", "show", "eth0"))[0]["address"]
    sent_filter = f"ether src {inet_mac} and udp dst port {WG_PORT}"
    with (
        Capture(lab.inet, "eth0", tmp_path / "attacker.pcap", sent_filter) as sent,
        Capture(lab.a.ns, "eth0", tmp_path / "a.pcap", f"udp port {WG_PORT}") as seen,
    ):
        attacker.knock(12)  # wireguard-go retries an unanswered initiation every 5 s
    forged = {
        _index(p, 4)
        for src, sport, dst, dport, p in udp_payloads(sent.path)
        if (src, sport, dst, dport) == (hub, WG_PORT, a_underlay, WG_PORT)
        and len(p) == 148
        and p[0] == INITIATION
    }
    at_device = udp_payloads(seen.path)
    arrived = {
        _index(p, 4)
        for src, _, dst, _, p in at_device
        if (src, dst) == (hub, a_underlay) and len(p) == 148 and p[0] == INITIATION
    }
    answered = {
        _index(p, 8)
        for src, _, _, _, p in at_device
        if src == a_underlay and p and p[0] in (RESPONSE, COOKIE_REPLY)
    }
    assert len(forged) >= 2, "the attacker sent fewer than two forged initiations"
    # they reached the device, whose ruleset accepts the hub's address and port:
    # what stays silent is WireGuard, which knows no peer with the attacker's key
    assert forged <= arrived, (forged, arrived)
    assert not forged & answered, "the device answered a handshake from an unknown key"
    # the device's own tunnel is unharmed
    deadline = time.monotonic() + 30
    while lab.a.status()["management"] != "online":
        assert time.monotonic() < deadline, lab.a.status()
        time.sleep(0.5)
