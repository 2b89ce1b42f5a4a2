"""A small SNTP server (RFC 4330 server mode) for devices inside the tunnel.

A device without a real-time clock may boot at 1970 (or far ahead, after a
bad save) and then cannot check any certificate. Its systemd-timesyncd asks
the management service's tunnel address, and only that (the layer's
firewall allows NTP to nothing else), before any TLS session. The hub
answers with its own clock, which its operator keeps synchronised (chrony or
ntpd on the hub's host, from sources the hub trusts).

Why not chrony in the reference set-up: it would be a second daemon with its
own configuration, user and state to run in a test namespace, for the one
thing the devices need (the current time, answered to a client request).
Production hubs may run any NTP server on the same address instead.
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
PACKET = struct.Struct("!BBbbIIIQQQQ")  # 48 bytes, RFC 5905 figure 8
MODE_CLIENT, MODE_SERVER = 3, 4
# refid of an undisciplined local clock (the "LOCAL" driver's 127.127.1.0);
# a hub whose host synchronises its clock may announce a lower stratum
LOCAL_REFID = 0x7F7F0100
DEFAULT_STRATUM = 10


class NtpError(ValueError):
    """A packet that is not an NTP client request."""


def to_ntp(unix: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) of a Unix time."""
    seconds = int(unix // 1) + NTP_EPOCH_OFFSET
    fraction = int((unix % 1) * 2**32) & 0xFFFFFFFF
    return ((seconds & 0xFFFFFFFF) << 32) | fraction


def from_ntp(stamp: int) -> float:
    return (stamp >> 32) - NTP_EPOCH_OFFSET + (stamp & 0xFFFFFFFF) / 2**32


@dataclass(frozen=True)
class Request:
    version: int
    poll: int
    transmit: int  # the client's transmit timestamp, echoed as our origin


def parse_request(data: bytes) -> Request:
    if len(data) < PACKET.size:
        raise NtpError(f"{len(data)} bytes, an NTP packet has at least {PACKET.size}")
    first, _stratum, poll, *_rest, transmit = PACKET.unpack_from(data)
    version, mode = (first >> 3) & 0x7, first & 0x7
    if mode != MODE_CLIENT:
        raise NtpError(f"mode {mode}, only client requests (3) are answered")
    if not 1 <= version <= 4:
        raise NtpError(f"NTP version {version}")
    return Request(version, poll, transmit)


def response(req: Request, received: float, sent: float, stratum: int = DEFAULT_STRATUM) -> bytes:
    """The server's answer: leap indicator 0 (synchronised), our stratum, the
    client's transmit time as origin, our receive and transmit times."""
    first = (0 << 6) | (req.version << 3) | MODE_SERVER
    precision = -20  # about a microsecond
    root_delay = 0
    root_dispersion = 1 << 6  # 1/1024 s in 16.16 fixed point
    return PACKET.pack(
        first,
        stratum,
        max(4, min(req.poll, 17)),
        precision,
        root_delay,
        root_dispersion,
        LOCAL_REFID,
        to_ntp(received),  # reference time: the clock is read, not disciplined
        req.transmit,
        to_ntp(received),
        to_ntp(sent),
    )


class SntpServer:
    """Answers client requests on the given (address, port) pairs, in a thread."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        *,
        stratum: int = DEFAULT_STRATUM,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= stratum <= 15:
            raise ValueError(f"stratum {stratum} is not 1-15")
        self.stratum = stratum
        self.clock = clock
        self.answered = 0
        self._socks: list[socket.socket] = []
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, port))
            self._socks.append(sock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s in self._socks]

    def start(self) -> SntpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._socks:
            sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self._socks, [], [], 0.2)
            for sock in ready:
                data, peer = sock.recvfrom(1024)
                received = self.clock()
                try:
                    req = parse_request(data)
                except NtpError:
                    continue  # not ours to answer: no reflection, no error packets
                sock.sendto(response(req, received, self.clock(), self.stratum), peer)
                self.answered += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SNTP server for devices inside the tunnel")
    parser.add_argument("--listen", action="append", required=True, help="ADDRESS (port 123)")
    parser.add_argument("--port", type=int, default=123)
    parser.add_argument("--stratum", type=int, default=DEFAULT_STRATUM)
    args = parser.parse_args(argv)
    server = SntpServer([(a, args.port) for a in args.listen], stratum=args.stratum).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
