"""testbed/network/traffic.py: pcap files made here, byte by byte, taken apart by cause."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from testbed.network.traffic import (
    ETHERNET,
    RAW,
    TLS_PING,
    CaptureError,
    inner_causes,
    outer_size,
    per_month,
    read_pcap,
    underlay_causes,
)

DEVICE, HUB = "10.99.0.2", "10.99.0.1"
LINK_DEVICE, LINK_HUB = "192.0.2.10", "192.0.2.1"


def _ipv4(src: str, dst: str, proto: int, body: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        0,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return header + body


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _tcp(sport: int, dport: int, payload_len: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 0, 0, 0) + bytes(payload_len)


def _pcap(path: Path, linktype: int, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame
    path.write_bytes(out)
    return path


def _ether(ip: bytes) -> bytes:
    return bytes(6) + bytes(6) + b"\x08\x00" + ip


def _wg(kind: int, inner_len: int = 0) -> bytes:
    if kind == 1:
        return b"\x01" + bytes(147)
    if kind == 2:
        return b"\x02" + bytes(91)
    padded = -(-inner_len // 16) * 16
    return b"\x04" + bytes(15) + bytes(padded + 16)


def test_outer_size_is_what_a_data_message_takes_on_the_link() -> None:
    assert outer_size(0) == 60  # a keepalive
    assert outer_size(52) == 20 + 8 + 16 + 64 + 16
    assert outer_size(64) == 124
    assert outer_size(64, underlay_version=6) == 144


def test_underlay_and_tunnel_together_explain_every_byte(tmp_path: Path) -> None:
    ping = _ipv4(DEVICE, HUB, 6, _tcp(40000, 8883, TLS_PING))
    pong = _ipv4(HUB, DEVICE, 6, _tcp(8883, 40000, TLS_PING))
    ack = _ipv4(DEVICE, HUB, 6, _tcp(40000, 8883, 0))
    health = _ipv4(DEVICE, HUB, 6, _tcp(40000, 8883, 540))
    puback = _ipv4(HUB, DEVICE, 6, _tcp(8883, 40000, 27))
    data_ack = _ipv4(DEVICE, HUB, 6, _tcp(40000, 8883, 0))
    other_device = _ipv4("10.99.0.3", HUB, 6, _tcp(40001, 8884, 500))  # not ours
    inner = [ping, pong, ack, health, puback, data_ack, other_device]
    underlay = (
        [
            _ipv4(LINK_DEVICE, LINK_HUB, 17, _udp(51820, 51820, _wg(1))),
            _ipv4(LINK_HUB, LINK_DEVICE, 17, _udp(51820, 51820, _wg(2))),
            _ipv4(LINK_DEVICE, LINK_HUB, 17, _udp(51820, 51820, _wg(4, 0))),  # keepalive
        ]
        + [_ipv4(LINK_DEVICE, LINK_HUB, 17, _udp(51820, 51820, _wg(4, len(p)))) for p in inner[:-1]]
    )
    outer_pcap = _pcap(tmp_path / "u.pcap", ETHERNET, [_ether(p) for p in underlay])
    inner_pcap = _pcap(tmp_path / "t.pcap", RAW, inner)

    wg, carried = underlay_causes(read_pcap(outer_pcap), 51820)
    assert wg.packets == {"WireGuard handshake": 2, "WireGuard keepalive": 1}
    assert wg.bytes["WireGuard handshake"] == 176 + 120
    assert wg.bytes["WireGuard keepalive"] == 60

    causes = inner_causes(read_pcap(inner_pcap), DEVICE, {8883: "management", 8884: "solution"})
    assert causes.packets == {"management MQTT ping": 3, "management health and metadata": 3}
    assert causes.total() == carried  # every data byte on the link explained


def test_a_file_that_is_not_a_capture_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a pcap file at all, really")
    with pytest.raises(CaptureError, match="not a classic pcap file"):
        read_pcap(bad)
    short = tmp_path / "y.pcap"
    short.write_bytes(b"abc")
    with pytest.raises(CaptureError, match="shorter than a pcap header"):
        read_pcap(short)


def test_per_month() -> None:
    assert per_month(27_180, 600) == pytest.approx(117.4, abs=0.1)
