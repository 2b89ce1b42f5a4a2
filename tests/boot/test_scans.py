"""The booted image, scanned the way an attacker would: from its own link,
from the hub through the tunnel, and from another device through the hub.

Every probe must meet silence: nmap finds no port that is open or closed,
a capture where the attacker sits holds nothing the device sent back, and
the device's own "dropped inbound" counter shows that the probes did reach
its firewall (nmap alone cannot tell a dropped probe from a lost one). The
attackers use the network tier's tools (nmap, tcpdump) against the VM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.boot.device import Device
from testbed.boot.hub import HUB_ADDRESS
from testbed.boot.pace import PACE
from testbed.boot.underlay import DEVICE_UNDERLAY, GUEST_MAC, NEIGHBOUR_IF, UNDERLAY_HOST

# the attacker's tools: the network tier's
from testbed.network.netns import Netns
from testbed.network.probes import Capture, ScanResult, nmap, sent_by_device

TCP_PORTS = 65535
UDP_PORTS = 1000


def _scan(rate: int) -> tuple[str, ...]:
    """One probe per port, no retries (tests/network/test_internet_scan.py has
    why), at `rate` probes/s on the reference machine, slower on a slower one:
    the emulated guest must count every probe, and a loaded host's guest drops
    some before its firewall sees them."""
    paced = max(250, round(rate / PACE.ratio))
    return ("-T5", "--max-retries", "0", "--min-rate", str(paced), "--host-timeout", "30m")


ON_LINK_RATE = 5000
# through the tunnel, each probe is also a WireGuard packet the emulated guest
# decrypts before its firewall drops it
IN_TUNNEL_RATE = 2500
# the hub's service ports in hub.json: MQTT for each service, artifacts over HTTPS
SERVICE_PORTS = ("management_port", "solution_port", "management_https_port")
ARRIVED = 0.95  # share of the probes the device's firewall must have counted


def _dropped_inbound(device: Device) -> int:
    """Packets counted by the last rule of the device's input chain."""
    ruleset = json.loads(device.vm.check("nft -j list chain inet twelvefactor input"))
    for item in ruleset["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == "dropped inbound":
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError("the device's input chain has no 'dropped inbound' counter")


def _link_local(device: Device) -> str:
    """The device's IPv6 link-local address on its underlay."""
    out = device.vm.check("ip -6 -o addr show scope link | grep -v ' tf0 '")
    return out.split()[3].split("/")[0]


def _silent(result: ScanResult, total: int, *allowed: str) -> None:
    assert result.total == total, result.states
    assert set(result.states) <= set(allowed), result.listed


def test_from_its_own_link_every_port_is_silent(device: Device, tmp_path: Path) -> None:
    """Full TCP and top-1,000 UDP scans, IPv4 and IPv6 link-local, from a
    host on the device's layer-2 segment."""
    inet = Netns(device.hub.underlay.inet_netns)
    v6 = f"{_link_local(device)}%{NEIGHBOUR_IF}"
    before = _dropped_inbound(device)
    with Capture(inet, NEIGHBOUR_IF, tmp_path / "link.pcap") as cap:
        tcp4 = nmap(inet, DEVICE_UNDERLAY, "-sS", "-p-", *_scan(ON_LINK_RATE))
        tcp6 = nmap(inet, v6, "-6", "-sS", "-p-", *_scan(ON_LINK_RATE))
        udp4 = nmap(
            inet, DEVICE_UNDERLAY, "-sU", "--top-ports", str(UDP_PORTS), *_scan(ON_LINK_RATE)
        )
        udp6 = nmap(inet, v6, "-6", "-sU", "--top-ports", str(UDP_PORTS), *_scan(ON_LINK_RATE))
    dropped = _dropped_inbound(device) - before
    print(
        f"on the link: TCP {tcp4.elapsed:.0f} s + {tcp6.elapsed:.0f} s, UDP {udp4.elapsed:.0f} s"
        f" + {udp6.elapsed:.0f} s; the device dropped {dropped} packets"
    )
    for tcp in (tcp4, tcp6):
        _silent(tcp, TCP_PORTS, "filtered")
    for udp in (udp4, udp6):
        # silence reads as "open|filtered" to nmap: "open" needs an answer,
        # "closed" an ICMP port unreachable
        _silent(udp, UDP_PORTS, "open|filtered", "filtered")
    # nothing came back to the attacker (the device's tunnel to the hub is
    # unicast to the hub and never crosses the attacker's port of the bridge)
    assert sent_by_device(cap, GUEST_MAC, UNDERLAY_HOST) == []
    assert dropped >= ARRIVED * 2 * (TCP_PORTS + UDP_PORTS), dropped


def test_from_the_hub_through_the_tunnel_every_port_is_silent(
    device: Device, tmp_path: Path
) -> None:
    """The hub itself, the one peer the device's WireGuard accepts, gets no
    answer on any port of the device's tunnel address either: the device
    serves nothing, even to its hub."""
    hub = device.hub
    ns = Netns(hub.netns)
    services = [hub.info[k] for k in SERVICE_PORTS]
    before = _dropped_inbound(device)
    with Capture(ns, hub.ifname, tmp_path / "tunnel.pcap") as cap:
        tcp = nmap(ns, device.tunnel_address, "-sS", "-p-", *_scan(IN_TUNNEL_RATE))
        udp = nmap(
            ns, device.tunnel_address, "-sU", "--top-ports", str(UDP_PORTS), *_scan(IN_TUNNEL_RATE)
        )
    dropped = _dropped_inbound(device) - before
    print(f"in the tunnel: TCP {tcp.elapsed:.0f} s, UDP {udp.elapsed:.0f} s; dropped {dropped}")
    _silent(tcp, TCP_PORTS, "filtered")
    _silent(udp, UDP_PORTS, "open|filtered", "filtered")
    # the device's own connections to the services are all it sent
    ports = " or ".join(str(p) for p in services)
    answers = cap.packets(
        f"src host {device.tunnel_address} and not (tcp and dst port ({ports}))"
        f" and not (udp and dst host {HUB_ADDRESS} and dst port 123)"
    )
    assert answers == [], answers[:20]
    assert dropped >= ARRIVED * (TCP_PORTS + UDP_PORTS), dropped


@pytest.fixture(scope="module")
def spoke(device: Device) -> Netns:
    return Netns(device.hub.add_spoke()[0])


def test_another_device_reaches_neither_this_one_nor_the_hubs_other_ports(
    device: Device, spoke: Netns
) -> None:
    """A second spoke of the same hub, handshake done: the hub forwards
    nothing between spokes, and on the hub itself only the service ports
    (MQTT twice, artifacts over HTTPS, NTP) answer it."""
    hub = device.hub
    before, hub_before = _dropped_inbound(device), hub.forward_drops()
    to_device = nmap(spoke, device.tunnel_address, "-sS", "-p-", *_scan(ON_LINK_RATE))
    _silent(to_device, TCP_PORTS, "filtered")
    # The hub forwards IP (as a hub host does): its own forward chain dropped the probes,
    # counted there; had it let them through, the device's firewall would have counted
    # tens of thousands. The device's catch-all counter may still see a few packets of
    # its link in the meantime (the host's router solicitations on the tap), hence < 100.
    assert hub.forward_drops() - hub_before >= ARRIVED * TCP_PORTS
    assert _dropped_inbound(device) - before < 100
    to_hub = nmap(spoke, HUB_ADDRESS, "-sS", "-p-", *_scan(ON_LINK_RATE))
    services = {f"tcp/{hub.info[k]}" for k in SERVICE_PORTS}
    # one probe per port: a loaded host can miss an answer, so nothing but the services
    # answers, and the services, scanned again with nmap's retries, all do
    assert to_hub.ports_in("open") <= services, to_hub.listed
    assert set(to_hub.states) <= {"open", "filtered"}, to_hub.listed
    ports = ",".join(sorted(p.split("/")[1] for p in services))
    assert nmap(spoke, HUB_ADDRESS, "-sS", "-p", ports).ports_in("open") == services
    udp = nmap(spoke, HUB_ADDRESS, "-sU", "--top-ports", str(UDP_PORTS), *_scan(ON_LINK_RATE))
    # the SNTP server answers; every other port is silent (no ICMP unreachable)
    assert udp.ports_in("open") <= {"udp/123"}, udp.listed
    assert set(udp.states) <= {"open", "open|filtered", "filtered"}, udp.listed
    assert nmap(spoke, HUB_ADDRESS, "-sU", "-p", "123").ports_in("open") == {"udp/123"}
    print(
        f"from another spoke: the device {to_device.elapsed:.0f} s, the hub TCP"
        f" {to_hub.elapsed:.0f} s, UDP {udp.elapsed:.0f} s"
    )
