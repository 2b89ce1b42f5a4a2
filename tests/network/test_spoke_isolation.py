"""From another device (a spoke whose owner has root: its firewall removed, its
WireGuard peer widened to the whole tunnel), through the hub: device A is
unreachable on every port, and on the hub only the service ports answer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.network.lab import TUNNEL_V4, TUNNEL_V6, Lab
from testbed.network.probes import Capture, nmap, ping

FAST = ("-T5", "--max-retries", "0", "--min-rate", "5000", "--host-timeout", "10m")


@pytest.fixture
def stolen_b(lab: Lab) -> Iterator[Lab]:
    b = lab.b
    assert b.tunnel is not None
    b.ns.exec("nft", "delete", "table", "inet", "twelvefactor")
    b.wg("set", "peer", b.tunnel.peer_key, "allowed-ips", f"{TUNNEL_V4},{TUNNEL_V6}")
    b.ns.ip("route", "replace", TUNNEL_V4, "dev", "tf0")
    b.ns.ip("-6", "route", "replace", TUNNEL_V6, "dev", "tf0")
    try:
        yield lab
    finally:
        b.ns.ip("route", "del", TUNNEL_V4, "dev", "tf0")
        b.ns.ip("-6", "route", "del", TUNNEL_V6, "dev", "tf0")
        b.wg("set", "peer", b.tunnel.peer_key, "allowed-ips", ",".join(b.tunnel.allowed_ips))
        b.load_firewall()
        b.render()


def _hub_forward_drops(lab: Lab) -> int:
    text = lab.hub_ns.exec("nft", "list", "chain", "inet", "twelvefactor_hub", "forward")
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", text))


def _hub_tunnel_received(lab: Lab) -> int:
    """Packets the hub's WireGuard interface has taken out of the tunnel."""
    text = lab.hub_ns.exec("ip", "-s", "-j", "link", "show", "dev", lab.hub_if)
    return int(json.loads(text)[0]["stats64"]["rx"]["packets"])


def test_device_a_unreachable_from_device_b_on_every_port(stolen_b: Lab, tmp_path: Path) -> None:
    lab = stolen_b
    a4, a6 = lab.tunnel_address(lab.a.id), lab.tunnel_address(lab.a.id, 6)
    before = _hub_forward_drops(lab)
    received_before = _hub_tunnel_received(lab)
    with Capture(lab.a.ns, "tf0", tmp_path / "a-tunnel.pcap") as cap:
        tcp = nmap(lab.b.ns, a4, "-sS", "-p-", *FAST)
        tcp6 = nmap(lab.b.ns, a6, "-6", "-sS", "-p-", *FAST)
        udp = nmap(lab.b.ns, a4, "-sU", "--top-ports", "1000", *FAST)
        answered = ping(lab.b.ns, a4, 2)
    for r in (tcp, tcp6):
        assert dict(r.states) == {"filtered": 65535}, r.listed
    assert set(udp.states) <= {"open|filtered", "filtered"}, udp.listed
    assert not answered
    b4, b6 = lab.tunnel_address(lab.b.id), lab.tunnel_address(lab.b.id, 6)
    assert cap.packets(f"src host {b4} or src host {b6}") == []
    # the hub's forward rule is what stopped them (the hub forwards otherwise): the
    # scans reached the hub, and it dropped what arrived. Counted against what arrived,
    # not against what nmap sent: on a loaded machine B's wireguard-go drops some of
    # a 5,000-per-second scan before it is sent (run20: 93 % arrived).
    received = _hub_tunnel_received(lab) - received_before
    dropped = _hub_forward_drops(lab) - before
    sent = 2 * 65535 + 1000
    assert received >= 0.5 * sent, f"{received} of {sent} probes reached the hub"
    assert dropped >= 0.95 * received, f"the hub dropped {dropped} of {received}"


def test_hub_answers_a_spoke_only_on_service_ports(stolen_b: Lab) -> None:
    lab = stolen_b
    info = lab.hub_info
    # the two MQTT listeners and the management service's HTTPS artifact server
    services = {
        f"tcp/{info['management_port']}",
        f"tcp/{info['solution_port']}",
        f"tcp/{info['management_https_port']}",
    }
    tcp = nmap(lab.b.ns, info["address_v4"], "-sS", "-p-", *FAST)
    # The fast scan sends each probe once: on a loaded machine an answer can be missed
    # (seen: the MQTT port shown filtered). Nothing but the services answers it, and the
    # services, scanned again with nmap's own retries, all do.
    assert tcp.ports_in("open") <= services
    assert tcp.ports_in("closed", "unfiltered") == set()
    assert tcp.states["filtered"] == 65535 - len(tcp.listed)
    ports = ",".join(sorted(p.split("/")[1] for p in services))
    assert nmap(lab.b.ns, info["address_v4"], "-sS", "-p", ports).ports_in("open") == services
    # nmap's UDP probes include NTP: the hub answers it, and nothing else
    udp = nmap(lab.b.ns, info["address_v4"], "-sU", "--top-ports", "1000", "-p", "U:123", *FAST)
    assert udp.ports_in("open") <= {"udp/123"}
    assert udp.ports_in("closed") == set()
    assert nmap(lab.b.ns, info["address_v4"], "-sU", "-p", "123").ports_in("open") == {"udp/123"}
    # the operator's API and the services' own listener are not reachable
    inside = nmap(
        lab.b.ns,
        info["address_v4"],
        "-sS",
        "-p",
        f"{info['management_api_port']},{info['service_port']}",
        *FAST,
    )
    assert dict(inside.states) == {"filtered": 2}
