"""The hub's plan (addresses, WireGuard peers, nftables, provisioning) and the SNTP codec."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from twelvefactor_services.hub.plan import (
    Peer,
    PlanError,
    ServicePorts,
    Tunnel,
    allocate,
    check_peers,
    check_public_key,
    nft_ruleset,
    provisioning,
    wg_config,
)
from twelvefactor_services.ntp import (
    PACKET,
    NtpError,
    Request,
    from_ntp,
    parse_request,
    response,
    to_ntp,
)

KEY = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(1, 33))).decode()
TUNNEL = Tunnel.parse("10.99.0.0/24", "fd00:99::/64")


def test_allocation_gives_one_host_address_each_and_matching_v6() -> None:
    v4, v6 = allocate(TUNNEL, [])
    assert (str(v4), str(v6)) == ("10.99.0.2", "fd00:99::2")
    first = Peer("a", KEY, v4, v6)
    v4b, v6b = allocate(TUNNEL, [first])
    assert (str(v4b), str(v6b)) == ("10.99.0.3", "fd00:99::3")
    assert first.allowed_ips() == ["10.99.0.2/32", "fd00:99::2/128"]


def test_a_full_tunnel_is_an_error() -> None:
    small = Tunnel.parse("10.99.0.0/30")
    taken = [Peer("a", KEY, ipaddress.IPv4Address("10.99.0.2"))]
    with pytest.raises(PlanError, match="full"):
        allocate(small, taken)


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_public_keys_are_refused(bad: str) -> None:
    with pytest.raises(PlanError):
        check_public_key(bad)


def test_peers_sharing_an_address_or_key_or_using_the_hubs_are_refused() -> None:
    a = Peer("a", KEY, ipaddress.IPv4Address("10.99.0.2"))
    with pytest.raises(PlanError, match="share"):
        check_peers(TUNNEL, [a, Peer("b", KEY, ipaddress.IPv4Address("10.99.0.3"))])
    with pytest.raises(PlanError, match="share"):
        check_peers(TUNNEL, [a, Peer("b", KEY2, ipaddress.IPv4Address("10.99.0.2"))])
    with pytest.raises(PlanError, match="not a device address"):
        check_peers(TUNNEL, [Peer("h", KEY, ipaddress.IPv4Address("10.99.0.1"))])
    with pytest.raises(PlanError, match="not a device address"):
        check_peers(TUNNEL, [Peer("o", KEY, ipaddress.IPv4Address("10.98.0.2"))])


def test_wg_config_lists_each_device_with_only_its_addresses() -> None:
    peers = [
        Peer("a", KEY, ipaddress.IPv4Address("10.99.0.2"), ipaddress.IPv6Address("fd00:99::2"))
    ]
    text = wg_config(KEY2, 51820, peers)
    assert "ListenPort = 51820" in text
    assert f"PublicKey = {KEY}\nAllowedIPs = 10.99.0.2/32, fd00:99::2/128" in text


def test_nft_ruleset_drops_forwarding_and_non_service_ports() -> None:
    text = nft_ruleset("wg0", TUNNEL, [8883, 8884, 8443])
    assert 'iifname "wg0" counter drop' in text
    assert 'oifname "wg0" counter drop' in text
    assert "ip daddr 10.99.0.1 tcp dport { 8443, 8883, 8884 } accept" in text
    assert "ip6 daddr fd00:99::1 udp dport 123 accept" in text
    with pytest.raises(PlanError):
        nft_ruleset("wg0", TUNNEL, [])


def test_provisioning_names_the_hub_and_the_devices_addresses() -> None:
    peer = Peer("a", KEY, ipaddress.IPv4Address("10.99.0.2"), ipaddress.IPv6Address("fd00:99::2"))
    text = provisioning(
        peer,
        TUNNEL,
        hub_endpoint="192.0.2.1",
        hub_port=51820,
        hub_public_key=KEY2,
        ports=ServicePorts(8883, 8884, 8443),
    )
    lines = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines["TUNNEL_ADDRESS_V4"] == "10.99.0.2/24"
    assert lines["SERVICE_ADDRESS_V4"] == "10.99.0.1"
    assert lines["TUNNEL_ADDRESS_V6"] == "fd00:99::2/64"
    assert lines["HUB_PUBLIC_KEY"] == KEY2


def test_ntp_timestamps_round_trip() -> None:
    assert abs(from_ntp(to_ntp(1764133200.25)) - 1764133200.25) < 1e-6


def test_ntp_answers_a_client_request_with_its_origin() -> None:
    request = bytearray(48)
    request[0] = (4 << 3) | 3
    request[40:48] = (123456789).to_bytes(8, "big")
    req = parse_request(bytes(request))
    assert req == Request(4, 0, 123456789)
    fields = PACKET.unpack(response(req, 1764133200.0, 1764133200.5))
    assert fields[0] == (4 << 3) | 4  # leap 0, version 4, server
    assert 1 <= fields[1] <= 15
    assert fields[8] == 123456789  # origin = the client's transmit time
    assert abs(from_ntp(fields[10]) - 1764133200.5) < 1e-6


@pytest.mark.parametrize("packet", [b"short", bytes([(4 << 3) | 4]) + bytes(47)])
def test_ntp_ignores_what_is_not_a_client_request(packet: bytes) -> None:
    with pytest.raises(NtpError):
        parse_request(packet)
