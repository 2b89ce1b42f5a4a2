"""Run INSIDE a device namespace: try to reach each target, report what happened.

Input (argv[1]): JSON list of [kind, address, port] with kind tcp, udp or icmp.
Output: JSON list of [kind, address, port, outcome], outcome "connected",
"sent", "answered" or the error's name (EPERM: the firewall refused a
datagram locally; ETIMEDOUT: a TCP connect whose SYNs the firewall dropped). Nothing here listens.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _error(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "ETIMEDOUT"
    return errno.errorcode.get(exc.errno or 0, str(exc))


def attempt(kind: str, address: str, port: int) -> str:
    family = _family(address)
    try:
        if kind == "tcp":
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((address, port))
                return "connected"
        if kind == "udp":
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.settimeout(1)
                s.sendto(b"twelvefactor egress probe", (address, port))
                try:
                    s.recvfrom(2048)
                    return "answered"
                except TimeoutError:
                    return "sent"
        if kind == "dhcp":  # from the DHCP client's port to the server's
            ports = (546, 547) if family == socket.AF_INET6 else (68, 67)
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", ports[0]))
                s.sendto(b"twelvefactor egress probe", (address, ports[1]))
                return "sent"
        if kind == "icmp":
            proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
            echo = bytes([128 if family == socket.AF_INET6 else 8, 0, 0, 0, 0, 1, 0, 1])
            if family == socket.AF_INET:  # the kernel computes ICMPv6 checksums, not v4
                total = sum(int.from_bytes(echo[i : i + 2], "big") for i in range(0, 8, 2))
                total = (total & 0xFFFF) + (total >> 16)
                echo = echo[:2] + (~total & 0xFFFF).to_bytes(2, "big") + echo[4:]
            with socket.socket(family, socket.SOCK_RAW, proto) as s:
                s.settimeout(1)
                s.sendto(echo, (address, 0))
                try:
                    s.recvfrom(2048)
                    return "answered"
                except TimeoutError:
                    return "sent"
    except OSError as exc:
        return _error(exc)
    raise ValueError(f"unknown kind {kind!r}")


def main() -> int:
    targets = json.loads(sys.argv[1])
    with ThreadPoolExecutor(len(targets)) as pool:  # a dropped SYN waits out its timeout
        outcomes = list(pool.map(lambda t: attempt(*t), targets))
    print(json.dumps([[k, a, p, o] for (k, a, p), o in zip(targets, outcomes, strict=True)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
