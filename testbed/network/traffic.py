"""What a device's traffic on the underlay is made of, from two captures. Pure.

The underlay capture (the device's link) sees WireGuard only: handshakes (message
types 1-3), keepalives (a data message with nothing inside: 32 bytes of UDP
payload) and data messages. The tunnel capture (the hub's WireGuard interface,
taken at the same time) sees what those data messages carry, in clear: the two
MQTT sessions over TLS and time sync. Each inner packet travels in exactly one
data message of a size fixed by its own (WireGuard pads to 16 bytes), so the
data bytes on the underlay are attributed to the inner packets exactly, and the
sum is checked against what the underlay capture measured.

Inside TLS the MQTT packet type is not visible; the record sizes tell: a TLS 1.3
record of a 2-byte MQTT packet (PINGREQ, PINGRESP) is 24 bytes of TCP payload.
A TCP segment without payload (an ACK) is counted with what it acknowledges: the
last segment with payload in the other direction of the same connection.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# pcap link types: Ethernet, raw IP (three spellings), Linux cooked v1 and v2
ETHERNET, RAW, RAW_BSD, RAW_IPV4, RAW_IPV6, SLL, SLL2 = 1, 101, 12, 228, 229, 113, 276
TLS_PING = 24  # TCP payload of a TLS 1.3 record holding a 2-byte MQTT packet
# Records shorter than this carry an acknowledgement (PUBACK: 4 bytes of MQTT, 27 of TCP
# payload) or nothing at all; the shortest PUBLISH of a health report is hundreds.
ACK_RECORD = 64
MONTH = 30 * 24 * 3600.0
WG_KEEPALIVE = 32  # UDP payload of a WireGuard data message with nothing inside


class CaptureError(ValueError):
    """A capture this reader cannot take apart."""


@dataclass(frozen=True)
class Packet:
    ts: float
    version: int
    src: str
    dst: str
    proto: int  # 6 TCP, 17 UDP
    ip_len: int  # the IP packet's length: what the link carries above its own header
    sport: int
    dport: int
    payload: bytes  # the transport's payload (as captured: may be cut at the snap length)
    payload_len: int  # its length on the wire


def read_pcap(path: Path) -> list[Packet]:
    """The IPv4/IPv6 TCP and UDP packets of a classic pcap file (others are skipped)."""
    data = path.read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{path}: {len(data)} bytes, shorter than a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise CaptureError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _origlen = struct.unpack(endian + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        ip = _ip_of(frame, linktype)
        if ip is None:
            continue
        packet = parse_ip(sec + frac / (1e9 if nano else 1e6), ip)
        if packet is not None:
            out.append(packet)
    return out


def _ip_of(frame: bytes, linktype: int) -> bytes | None:
    if linktype == ETHERNET:
        ethertype, start = struct.unpack("!H", frame[12:14])[0], 14
        if ethertype == 0x8100:  # one VLAN tag
            ethertype, start = struct.unpack("!H", frame[16:18])[0], 18
        return frame[start:] if ethertype in (0x0800, 0x86DD) else None
    if linktype in (RAW, RAW_BSD, RAW_IPV4, RAW_IPV6):
        return frame
    if linktype == SLL:
        return frame[16:] if struct.unpack("!H", frame[14:16])[0] in (0x0800, 0x86DD) else None
    if linktype == SLL2:
        return frame[20:] if struct.unpack("!H", frame[0:2])[0] in (0x0800, 0x86DD) else None
    raise CaptureError(f"link type {linktype} is not one this reader knows")


def parse_ip(ts: float, ip: bytes) -> Packet | None:
    """A TCP or UDP packet over IPv4 or IPv6 (no extension headers), or None."""
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4:
        header = (ip[0] & 0x0F) * 4
        total, proto = struct.unpack("!H", ip[2:4])[0], ip[9]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
    elif version == 6:
        header, proto = 40, ip[6]
        total = 40 + struct.unpack("!H", ip[4:6])[0]
        src, dst = ip[8:24].hex(":"), ip[24:40].hex(":")
    else:
        return None
    body = ip[header:]
    if proto == 17:
        sport, dport = struct.unpack("!HH", body[:4])
        start = 8
    elif proto == 6:
        sport, dport = struct.unpack("!HH", body[:4])
        start = (body[12] >> 4) * 4
    else:
        return None
    return Packet(
        ts, version, src, dst, proto, total, sport, dport, body[start:], total - header - start
    )


def wg_message_type(p: Packet) -> int:
    return p.payload[0] if p.payload else 0


def outer_size(inner_len: int, underlay_version: int = 4) -> int:
    """The underlay IP packet that carries `inner_len` bytes through WireGuard: IP and UDP
    headers, the data message's header (16), the padded ciphertext and its tag (16)."""
    padded = -(-inner_len // 16) * 16
    return (20 if underlay_version == 4 else 40) + 8 + 16 + padded + 16


@dataclass
class Tally:
    """Packets and bytes per cause."""

    packets: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def add(self, cause: str, size: int) -> None:
        self.packets[cause] += 1
        self.bytes[cause] += size

    def total(self) -> int:
        return sum(self.bytes.values())


def underlay_causes(packets: list[Packet], wg_port: int) -> tuple[Tally, int]:
    """WireGuard's own messages by kind, and the bytes of the data messages that carry
    something (left for the tunnel capture to explain)."""
    tally, carried = Tally(), 0
    for p in packets:
        if p.proto != 17 or wg_port not in (p.sport, p.dport):
            tally.add("not WireGuard", p.ip_len)
            continue
        kind = wg_message_type(p)
        if kind in (1, 2):
            tally.add("WireGuard handshake", p.ip_len)
        elif kind == 3:
            tally.add("WireGuard cookie", p.ip_len)
        elif kind == 4 and p.payload_len == WG_KEEPALIVE:
            tally.add("WireGuard keepalive", p.ip_len)
        else:
            carried += p.ip_len
    return tally, carried


def inner_causes(
    packets: list[Packet], device: str, sessions: dict[int, str], underlay_version: int = 4
) -> Tally:
    """The tunnel's packets to and from `device` (its tunnel address) by cause, each
    counted at its size on the underlay.

    `sessions` names the MQTT listeners' ports (8883: "management", ...). A session's
    segments are its pings (TLS_PING bytes either way), what the device publishes
    (larger, upward), what the services send it (larger, downward), and the
    acknowledgements of these: TCP ACKs and small records (an MQTT PUBACK), counted with
    the last segment of the other direction. UDP port 123 is time sync."""
    tally = Tally()
    last: dict[tuple[str, int, str, int], str] = {}  # a direction's last cause
    for p in packets:
        if device not in (p.src, p.dst):
            continue
        size = outer_size(p.ip_len, underlay_version)
        if p.proto == 17 and 123 in (p.sport, p.dport):
            tally.add("time sync", size)
            continue
        port = p.dport if p.dport in sessions else p.sport if p.sport in sessions else None
        if p.proto != 6 or port is None:
            tally.add("other", size)
            continue
        session = sessions[port]
        if p.payload_len == TLS_PING:
            cause = f"{session} MQTT ping"
        elif p.payload_len < ACK_RECORD:
            cause = last.get((p.dst, p.dport, p.src, p.sport), f"{session} connection")
        elif p.src == device:
            what = "health and metadata" if session == "management" else "data"
            cause = f"{session} {what}"
        else:
            cause = f"{session} from the service"
        if p.payload_len:
            last[(p.src, p.sport, p.dst, p.dport)] = cause
        tally.add(cause, size)
    return tally


def per_month(byte_count: float, seconds: float) -> float:
    """Bytes in `seconds`, extrapolated to a 30-day month, in MB (10^6)."""
    return byte_count * MONTH / seconds / 1e6
