"""The booted device's own network link, and who else is on it.

QEMU's NIC is a tap in the hub's namespace, on a bridge that also holds:
- the hub, as UNDERLAY_HOST: the device's WireGuard endpoint, its DHCP
  server, IPv6 router advertiser and DNS resolver (dnsmasq), its default
  router (which routes nowhere: the namespace forwards nothing);
- an attacker, in a namespace of its own (INTERNET_HOST), as close to the
  device as anyone off it gets: on the same layer-2 segment;
- optionally another device (a spoke): a WireGuard peer of the hub with its
  own tunnel address, in a namespace of its own (SPOKE_UNDERLAY).

A tap rather than QEMU's user-mode network (slirp): slirp lets the guest
connect out but nothing in, so nobody could scan the device. Names are
unique per test run (the hub's tag).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from testbed.proc import TestbedError, run, stop, tail

UNDERLAY_HOST = "10.0.2.2"  # the hub on the device's link
DEVICE_UNDERLAY = "10.0.2.15"  # dnsmasq leases only this
INTERNET_HOST = "10.0.2.66"
SPOKE_UNDERLAY = "10.0.2.77"
UNDERLAY_PREFIX = 24
# IPv6 on the link (a unique local prefix): router advertisements from the
# hub give the device an address and a default route, as most networks do
UNDERLAY_HOST_V6 = "fd77:2::2"
UNDERLAY_PREFIX_V6 = 64
GUEST_MAC = "52:54:00:12:34:56"  # QEMU's default for the first NIC
NEIGHBOUR_IF = "eth0"  # the attacker's and the spoke's interface on the link


class Underlay:
    def __init__(self, root: Path, hub_netns: str, tag: int) -> None:
        self.root = root
        self.hub_netns = hub_netns
        self.bridge = f"tfbr{tag}"
        self.tap = f"tft{tag}"
        self.inet_netns = f"tfinet-{tag}"
        self._dnsmasq: subprocess.Popen[bytes] | None = None
        self._neighbours: list[str] = []

    def start(self) -> None:
        ns = self.hub_netns
        run("ip", "-n", ns, "link", "add", self.bridge, "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{UNDERLAY_HOST}/{UNDERLAY_PREFIX}", "dev", self.bridge)
        host6 = f"{UNDERLAY_HOST_V6}/{UNDERLAY_PREFIX_V6}"
        run("ip", "-n", ns, "addr", "add", host6, "dev", self.bridge, "nodad")
        run("ip", "-n", ns, "link", "set", self.bridge, "up")
        # persistent, so QEMU attaches to the same tap at every power-on
        run("ip", "-n", ns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        run("ip", "-n", ns, "link", "set", self.tap, "master", self.bridge, "up")
        self.add_neighbour(self.inet_netns, INTERNET_HOST)
        log = (self.root / "dnsmasq.log").open("ab")
        argv = [
            *("ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground"),
            *("--log-facility=-", "--log-dhcp", "--conf-file=/dev/null"),
            *("--no-resolv", "--no-hosts", "--user=root", "--bind-interfaces"),
            f"--interface={self.bridge}",
            f"--pid-file={self.root / 'dnsmasq.pid'}",
            f"--dhcp-leasefile={self.root / 'dnsmasq.leases'}",
            "--dhcp-authoritative",
            f"--dhcp-host={GUEST_MAC},{DEVICE_UNDERLAY}",
            f"--dhcp-range={DEVICE_UNDERLAY},static,255.255.255.0,1h",
            f"--dhcp-option=option:router,{UNDERLAY_HOST}",
            f"--dhcp-option=option:dns-server,{UNDERLAY_HOST}",
            "--enable-ra",
            f"--dhcp-range=::,constructor:{self.bridge},ra-only,1h",
            # a router lifetime, so that the device takes the hub as its IPv6
            # default router (dnsmasq sends 0 from a host without a default route)
            f"--ra-param={self.bridge},10,1800",
            # a resolver that answers every name: a device that tried DNS would get an answer
            f"--address=/#/{UNDERLAY_HOST}",
        ]
        self._dnsmasq = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while b"started, version" not in (self.root / "dnsmasq.log").read_bytes():
            if self._dnsmasq.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"dnsmasq did not start: {self.log_tail()}")
            time.sleep(0.1)

    def add_neighbour(self, netns: str, address: str) -> None:
        """A namespace on the device's link: `address` on its NEIGHBOUR_IF."""
        run("ip", "netns", "add", netns)
        self._neighbours.append(netns)
        port = f"tfp{len(self._neighbours)}{self.tap[3:]}"[:15]
        run("ip", "-n", self.hub_netns, "link", "add", port, "type", "veth",
            "peer", "name", NEIGHBOUR_IF, "netns", netns)  # fmt: skip
        run("ip", "-n", self.hub_netns, "link", "set", port, "master", self.bridge, "up")
        run("ip", "-n", netns, "addr", "add", f"{address}/{UNDERLAY_PREFIX}", "dev", NEIGHBOUR_IF)
        run("ip", "-n", netns, "link", "set", NEIGHBOUR_IF, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")

    def limit_rate(self, rate: str | None) -> None:
        """Shape what the link carries to the device (`tc` tbf on the tap, e.g.
        "32mbit"), as a slow link would; None lifts the limit."""
        tc = ("ip", "netns", "exec", self.hub_netns, "tc", "qdisc")
        if rate is None:
            run(*tc, "del", "dev", self.tap, "root", check=False)
        else:
            run(*tc, "replace", "dev", self.tap, "root", "tbf", "rate", rate,
                "burst", "64kb", "latency", "500ms")  # fmt: skip

    def qemu_nic(self) -> str:
        # no virtio-net header in front of the frames: QEMU's filter-dump would write it too
        tap = f"tap,id=net0,ifname={self.tap},script=no,downscript=no,vnet_hdr=off"
        return f"{tap},model=virtio-net-pci"

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.root / "dnsmasq.log", lines)

    def stop(self) -> None:
        stop(self._dnsmasq)
        self._dnsmasq = None
        for netns in self._neighbours:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        self._neighbours = []
