"""A process on the device (root, even) gets nothing out except through the tunnel
to the two services: 20 destinations outside the allowlist, each refused, and a
capture of the underlay that holds only WireGuard to the hub."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from testbed.network.lab import DEVICES, FAR, HUB_UNDERLAY, INTERNET, Lab
from testbed.network.probes import Capture, sent_by_device

PROBE = Path(__file__).with_name("egress_probe.py")


def targets(lab: Lab) -> list[tuple[str, str, int]]:
    hub4 = lab.hub_info["address_v4"]
    b_under = DEVICES[lab.b.id][0]
    return [
        ("tcp", INTERNET[0], 80),  # the router / the internet
        ("tcp", INTERNET[0], 443),
        ("tcp", INTERNET[1], 443),
        ("udp", INTERNET[0], 53),  # DNS
        ("udp", INTERNET[1], 53),
        ("udp", INTERNET[0], 123),  # NTP elsewhere than the management service
        ("tcp", FAR[0], 443),  # beyond the router, by the default route
        ("tcp", FAR[1], 443),
        ("icmp", FAR[0], 0),
        ("udp", "255.255.255.255", 9),  # broadcast
        ("udp", "224.0.0.251", 5353),  # mDNS
        ("tcp", b_under, 8883),  # another device on the same network
        ("udp", b_under, 51820),  # its WireGuard port
        ("tcp", HUB_UNDERLAY[0], 8883),  # the hub outside the tunnel
        ("udp", HUB_UNDERLAY[0], 123),
        ("tcp", lab.tunnel_address(lab.b.id), 22),  # another device's tunnel address
        ("tcp", lab.tunnel_address(lab.b.id, 6), 22),
        ("tcp", hub4, 22),  # the hub's tunnel address, not a service port
        ("tcp", hub4, lab.hub_info["management_api_port"]),  # the operator API
        ("udp", hub4, 53),  # DNS on the service address
    ]


def test_twenty_destinations_outside_the_allowlist_get_nothing_out(
    lab: Lab, tmp_path: Path
) -> None:
    wanted = targets(lab)
    assert len(wanted) == 20
    with Capture(lab.a.ns, "eth0", tmp_path / "underlay.pcap") as cap:
        out = lab.a.ns.exec(sys.executable, str(PROBE), json.dumps(wanted))
    results = {(k, a, p): outcome for k, a, p, outcome in json.loads(out)}
    # datagrams are refused at once (EPERM), TCP connects time out (the output
    # chain drops each SYN and its retries); nothing connects, is sent or answered
    escaped = {t: r for t, r in results.items() if r in ("connected", "sent", "answered")}
    assert escaped == {}, results
    assert set(results.values()) <= {"EPERM", "ETIMEDOUT"}, results
    assert sent_by_device(cap, lab.a.mac, HUB_UNDERLAY[0]) == []


def test_the_allowed_path_works_from_the_same_process(lab: Lab) -> None:
    """The control: the same probe reaches the broker through the tunnel, so the
    refusals above are the firewall's policy, not a broken set-up."""
    hub4 = lab.hub_info["address_v4"]
    wanted = [("tcp", hub4, lab.hub_info["management_port"])]
    out = lab.a.ns.exec(sys.executable, str(PROBE), json.dumps(wanted))
    assert json.loads(out)[0][3] == "connected"


def _dhcp(lab: Lab, address: str) -> str:
    out = lab.a.ns.exec(sys.executable, str(PROBE), json.dumps([("dhcp", address, 0)]))
    return str(json.loads(out)[0][3])


def test_dhcp_goes_only_to_broadcast_and_to_a_server_that_answered(lab: Lab) -> None:
    """Issue 19, finding 17: DHCP's ports reached any address of the underlay."""
    server = INTERNET[0]
    assert _dhcp(lab, server) == "EPERM"  # no DHCP server at that address answered yet
    assert _dhcp(lab, FAR[0]) == "EPERM"
    assert _dhcp(lab, INTERNET[1]) == "EPERM"  # DHCPv6 to a unicast address
    assert _dhcp(lab, "255.255.255.255") == "sent"
    # A DHCP answer from the server (source port 67 to the client's 68) ...
    device = DEVICES[lab.a.id][0]
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({server!r}, 67)); s.sendto(b'offer', ({device!r}, 68))"
    )
    lab.inet.exec(sys.executable, "-c", code)
    # ... makes it a server the device may renew with; other addresses stay closed.
    deadline = time.monotonic() + 10
    while _dhcp(lab, server) != "sent":
        assert time.monotonic() < deadline, "the answering server was not remembered"
        time.sleep(0.2)
    assert _dhcp(lab, FAR[0]) == "EPERM"
