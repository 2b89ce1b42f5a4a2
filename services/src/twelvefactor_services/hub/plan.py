"""What the hub's configuration is, computed without I/O.

Every device gets one IPv4 /32 (and, when the tunnel has IPv6, one /128):
the hub's WireGuard peer for the device allows only that address, so a
device cannot send from another device's address, and the hub's nftables
table drops every packet the hub would forward from one spoke to another (or
from a spoke to anywhere). From a spoke, the hub itself accepts only the
service ports on its own tunnel address: the two MQTT listeners, the
management HTTPS port (artifacts) and NTP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from twelvefactor_agent.enrol.datafiles import DataFileError, NetworkSettings, check_wireguard_key

NTP_PORT = 123
TABLE = "twelvefactor_hub"


class PlanError(ValueError):
    """A bad hub setting or peer: the message says which value and why."""


def check_public_key(text: str) -> str:
    """A WireGuard public key: base64 of 32 bytes."""
    try:
        return check_wireguard_key(text, "public key")
    except DataFileError as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True)
class Tunnel:
    """The tunnel's networks; the hub takes the first host address of each."""

    network_v4: ipaddress.IPv4Network
    network_v6: ipaddress.IPv6Network | None = None

    @classmethod
    def parse(cls, v4: str, v6: str | None = None) -> Tunnel:
        try:
            net4 = ipaddress.IPv4Network(v4, strict=True)
            net6 = None if v6 is None else ipaddress.IPv6Network(v6, strict=True)
        except ValueError as exc:
            raise PlanError(f"tunnel network: {exc}") from None
        if net4.num_addresses < 4:
            raise PlanError(f"tunnel network {net4} has no room for devices")
        if net6 is not None and net6.prefixlen > 120:
            raise PlanError(f"tunnel network {net6} is too small (at most /120)")
        return cls(net4, net6)

    @property
    def hub_v4(self) -> ipaddress.IPv4Address:
        return self.network_v4.network_address + 1

    @property
    def hub_v6(self) -> ipaddress.IPv6Address | None:
        return None if self.network_v6 is None else self.network_v6.network_address + 1

    def hub_interfaces(self) -> list[str]:
        """The hub's own addresses with the tunnel's prefix (what `ip addr add` takes)."""
        out = [f"{self.hub_v4}/{self.network_v4.prefixlen}"]
        if self.network_v6 is not None:
            out.append(f"{self.hub_v6}/{self.network_v6.prefixlen}")
        return out


@dataclass(frozen=True)
class Peer:
    device: str
    public_key: str
    address_v4: ipaddress.IPv4Address
    address_v6: ipaddress.IPv6Address | None = None

    def allowed_ips(self) -> list[str]:
        """Exactly this device's addresses: /32 and /128."""
        out = [f"{self.address_v4}/32"]
        if self.address_v6 is not None:
            out.append(f"{self.address_v6}/128")
        return out


def allocate(
    tunnel: Tunnel, taken: Iterable[Peer]
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address | None]:
    """The lowest IPv4 host address nobody holds (after the hub's), and the IPv6
    address with the same host number, so a device's two addresses match."""
    used = {int(p.address_v4) for p in taken}
    first = int(tunnel.hub_v4) + 1
    last = int(tunnel.network_v4.broadcast_address) - 1
    for value in range(first, last + 1):
        if value not in used:
            v4 = ipaddress.IPv4Address(value)
            break
    else:
        raise PlanError(f"tunnel network {tunnel.network_v4} is full")
    v6 = None
    if tunnel.network_v6 is not None:
        host = value - int(tunnel.network_v4.network_address)
        v6 = tunnel.network_v6.network_address + host
    return v4, v6


def check_peers(tunnel: Tunnel, peers: Sequence[Peer]) -> None:
    """Each address and key belongs to one device, inside the tunnel, not the hub's."""
    seen: dict[str, str] = {}
    for p in peers:
        if p.address_v4 not in tunnel.network_v4 or p.address_v4 in (
            tunnel.hub_v4,
            tunnel.network_v4.network_address,
            tunnel.network_v4.broadcast_address,
        ):
            raise PlanError(f"{p.device}: {p.address_v4} is not a device address in {tunnel}")
        if p.address_v6 is not None and (
            tunnel.network_v6 is None
            or p.address_v6 not in tunnel.network_v6
            or p.address_v6 == tunnel.hub_v6
        ):
            raise PlanError(f"{p.device}: {p.address_v6} is not a device address in {tunnel}")
        values = [p.public_key, str(p.address_v4)]
        if p.address_v6 is not None:
            values.append(str(p.address_v6))
        for value in values:
            if seen.setdefault(value, p.device) != p.device:
                raise PlanError(f"{p.device} and {seen[value]} share {value}")


def wg_config(private_key: str, listen_port: int, peers: Sequence[Peer]) -> str:
    """`wg setconf`/`wg syncconf` text: every device a peer with only its own addresses."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {listen_port}"]
    for p in sorted(peers, key=lambda p: int(p.address_v4)):
        lines += ["", f"# {p.device}", "[Peer]", f"PublicKey = {p.public_key}"]
        lines.append(f"AllowedIPs = {', '.join(p.allowed_ips())}")
    return "\n".join(lines) + "\n"


def nft_ruleset(interface: str, tunnel: Tunnel, tcp_ports: Iterable[int]) -> str:
    """The hub's table: only tunnel traffic is its business, so its base chains
    accept by default (the operator's other rules stay in force; a drop in any
    table is final) and drop everything from spokes but the services."""
    ports = ", ".join(str(p) for p in sorted(set(tcp_ports)))
    if not ports:
        raise PlanError("the hub needs at least one service port")
    v6 = []
    if tunnel.hub_v6 is not None:
        v6 = [
            f"\t\tip6 daddr {tunnel.hub_v6} tcp dport {{ {ports} }} accept",
            f"\t\tip6 daddr {tunnel.hub_v6} udp dport {NTP_PORT} accept",
        ]
    return "\n".join(
        [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "\tchain from_spokes {",
            "\t\tct state established,related accept",
            "\t\tct state invalid drop",
            f"\t\tip daddr {tunnel.hub_v4} tcp dport {{ {ports} }} accept",
            f"\t\tip daddr {tunnel.hub_v4} udp dport {NTP_PORT} accept",
            *v6,
            '\t\tcounter drop comment "spoke to a hub port that is not a service"',
            "\t}",
            "\tchain input {",
            "\t\ttype filter hook input priority filter; policy accept;",
            f'\t\tiifname "{interface}" jump from_spokes',
            "\t}",
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
            f'\t\tiifname "{interface}" counter drop comment "from a spoke: never forwarded"',
            f'\t\toifname "{interface}" counter drop comment "into the tunnel: never forwarded"',
            "\t}",
            "}",
            "",
        ]
    )


@dataclass(frozen=True)
class ServicePorts:
    management_mqtt: int
    solution_mqtt: int
    management_https: int

    def tcp(self) -> list[int]:
        return [self.management_mqtt, self.solution_mqtt, self.management_https]


def network_settings(
    peer: Peer,
    tunnel: Tunnel,
    *,
    hub_endpoint: str,
    hub_port: int,
    hub_public_key: str,
    ports: ServicePorts,
) -> NetworkSettings:
    """The device's side of the tunnel: the hub's endpoint and key, the device's tunnel
    addresses, the services (what network.conf holds, and an enrolment response)."""
    try:
        ipaddress.ip_address(hub_endpoint.strip("[]"))
        v6 = peer.address_v6 is not None and tunnel.network_v6 is not None
        return NetworkSettings(
            hub_endpoint_address=hub_endpoint.strip("[]"),
            hub_endpoint_port=hub_port,
            hub_public_key=check_public_key(hub_public_key),
            tunnel_address_v4=f"{peer.address_v4}/{tunnel.network_v4.prefixlen}",
            service_address_v4=str(tunnel.hub_v4),
            management_mqtt_port=ports.management_mqtt,
            solution_mqtt_port=ports.solution_mqtt,
            management_https_port=ports.management_https,
            tunnel_address_v6=f"{peer.address_v6}/{tunnel.network_v6.prefixlen}"
            if v6 and tunnel.network_v6 is not None
            else None,
            service_address_v6=str(tunnel.hub_v6) if v6 else None,
        )
    except (ValueError, DataFileError) as exc:
        raise PlanError(f"--endpoint {hub_endpoint!r}: {exc}") from None


def provisioning(
    peer: Peer,
    tunnel: Tunnel,
    *,
    hub_endpoint: str,
    hub_port: int,
    hub_public_key: str,
    ports: ServicePorts,
) -> str:
    """The device's /data/provisioning/network.conf (the layer's twelvefactor-netconfig
    reads it), rendered as enrolment renders it (twelvefactor_agent.enrol.datafiles)."""
    settings = network_settings(
        peer,
        tunnel,
        hub_endpoint=hub_endpoint,
        hub_port=hub_port,
        hub_public_key=hub_public_key,
        ports=ports,
    )
    return settings.network_conf(f"tunnel of {peer.device}, written by twelvefactor-hub")
