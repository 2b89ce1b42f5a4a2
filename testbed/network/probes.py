"""Attacker-side tools: nmap with XML results, tcpdump captures read back."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from testbed.network.netns import Netns
from testbed.proc import TestbedError, run, stop


@dataclass
class ScanResult:
    states: Counter[str]  # state -> number of ports, "extraports" included
    listed: dict[str, str]  # "tcp/8883" -> state, for ports nmap lists one by one
    elapsed: float

    def ports_in(self, *states: str) -> set[str]:
        return {p for p, s in self.listed.items() if s in states}

    @property
    def total(self) -> int:
        return sum(self.states.values())


def parse_nmap_xml(text: str) -> ScanResult:
    root = ET.fromstring(text)
    hosts = root.findall("host")
    if len(hosts) != 1:
        raise TestbedError(f"nmap reported {len(hosts)} hosts, expected 1:\n{text[-2000:]}")
    ports = hosts[0].find("ports")
    if ports is None:
        raise TestbedError(f"nmap reported no ports:\n{text[-2000:]}")
    states: Counter[str] = Counter()
    listed: dict[str, str] = {}
    for extra in ports.findall("extraports"):
        states[extra.get("state", "?")] += int(extra.get("count", "0"))
    for port in ports.findall("port"):
        state_el = port.find("state")
        state = "?" if state_el is None else state_el.get("state", "?")
        listed[f"{port.get('protocol')}/{port.get('portid')}"] = state
        states[state] += 1
    finished = root.find("runstats/finished")
    elapsed = float(finished.get("elapsed", "0")) if finished is not None else 0.0
    return ScanResult(states, listed, elapsed)


def nmap(ns: Netns, target: str, *options: str, timeout: float = 900) -> ScanResult:
    """Run nmap in `ns` against `target` (an address inside the test's namespaces)."""
    argv = ns.argv("nmap", "-Pn", "-n", "--reason", "-oX", "-", *options, target)
    return parse_nmap_xml(run(*argv, timeout=timeout))


class Capture:
    """tcpdump on one interface of a namespace, written to a pcap file."""

    def __init__(self, ns: Netns, interface: str, path: Path, bpf: str = "") -> None:
        self.ns, self.interface, self.path, self.bpf = ns, interface, path, bpf
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = path.with_suffix(".log")

    def __enter__(self) -> Capture:
        with open(self._log, "wb") as log:
            argv = [
                "tcpdump",
                "-i",
                self.interface,
                "-n",
                "-U",
                "-B",
                "16384",
                "-w",
                str(self.path),
            ]
            self._proc = subprocess.Popen(
                self.ns.argv(*argv, *([self.bpf] if self.bpf else [])),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while b"listening on" not in self._log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"tcpdump did not start: {self._log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        time.sleep(0.5)  # let the kernel hand over the last packets
        stop(self._proc, 15)

    def packets(self, bpf: str) -> list[str]:
        """One line per captured packet matching `bpf` (tcpdump's own filter syntax)."""
        return run("tcpdump", "-n", "-r", str(self.path), bpf).splitlines()


WG_PORT = 51820


def ping(ns: Netns, address: str, count: int, *, wait: float = 1.0) -> bool:
    """Ping ``address`` from ``ns`` ``count`` times a second apart: True if any answer came.

    An error (no `ping` on this host, a bad address, no route) raises rather than
    reading as "no answer", which a test of isolation would take for a pass.
    """
    if shutil.which("ping") is None:
        raise TestbedError(
            "this test needs 'ping' (Debian package iputils-ping): run scripts/setup"
        )
    argv = ns.argv("ping", "-n", "-c", str(count), "-i", "1", "-W", f"{wait:g}", address)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: sent, nothing answered; 2 and up: it could not send
        raise TestbedError(f"ping {address} failed ({done.returncode}): {done.stderr.strip()}")
    return done.returncode == 0


# IPv6 router solicitation, neighbour solicitation and advertisement (ICMPv6
# types 133, 135, 136 right after the 40-byte header): link-layer machinery the
# layer's ruleset allows on the underlay, not a service
ND = "(icmp6 and (ip6[40] == 133 or ip6[40] == 135 or ip6[40] == 136))"
# MLDv2 reports (the kernel announcing its link-local multicast groups after
# the link comes up) go to ff02::16 only, behind a hop-by-hop header
MLD = "(ip6 dst host ff02::16)"


def sent_by_device(cap: Capture, mac: str, hub: str) -> list[str]:
    """Every IP packet the device put on its underlay apart from WireGuard to the
    hub, neighbour discovery and MLD reports (what the layer's ruleset allows
    on the link; ARP is not IP and not counted)."""
    return cap.packets(
        f"ether src {mac} and (ip or ip6)"
        f" and not (udp and dst host {hub} and dst port {WG_PORT}) and not {ND} and not {MLD}"
    )


def udp_payloads(pcap: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(source, source port, destination, destination port, payload) of every
    IPv4 UDP datagram in an Ethernet pcap file (what tcpdump -w wrote)."""
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(magic)
    if order is None:
        raise TestbedError(f"{pcap}: not a pcap file (magic {magic.hex()})")
    out = []
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack_from(f"{order}I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or len(ip) < ihl + 8:
            continue
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
        out.append((src, sport, dst, dport, ip[ihl + 8 : ihl + length]))
    return out
