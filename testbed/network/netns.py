r"""Network namespaces for the network tier: a LAN, the hub, devices, an attacker.

```
  ns "inet" (192.0.2.66)  ns "a" (device A, .10)  ns "b" (device B, .11)  ns "hub" (.1)
          \                      |                       |                  /
           +------------- bridge br0 in ns "lan" (192.0.2.0/24, 2001:db8:2::/64) -+
```
The attacker shares the devices' layer-2 segment: the closest an outsider
gets (a café network, a compromised router). Every name carries the test
run's tag: interfaces in the root namespace only exist until they are moved,
and wireguard-go's control sockets (/var/run/wireguard/NAME.sock) are shared
by all namespaces, so a device's interface is created under a unique name
and renamed to the layer's `tf0` inside its namespace afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.proc import TestbedError, run

UNDERLAY_V4 = "192.0.2.0/24"  # TEST-NET-1
UNDERLAY_V6 = "2001:db8:2::/64"  # documentation prefix


def tag() -> str:
    return f"{os.getpid() % 100000}"


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> Netns:
        run("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        run("ip", "netns", "del", self.name, check=False)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, *argv: str, input_text: str | None = None, check: bool = True) -> str:
        return run(*self.argv(*argv), input_text=input_text, check=check)

    def ip(self, *argv: str) -> str:
        return run("ip", "-n", self.name, *argv)

    def popen(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            return subprocess.Popen(
                self.argv(*argv),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def wait_link(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while subprocess.run(
            ["ip", "-n", self.name, "link", "show", name], capture_output=True, check=False
        ).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"{name} did not appear in {self.name}")
            time.sleep(0.05)


class Lan:
    """The bridge namespace and one veth port per attached namespace (eth0 inside)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ns = Netns(f"{prefix}-lan")
        self._ports = 0

    def create(self) -> Lan:
        self.ns.create()
        self.ns.ip("link", "add", "br0", "type", "bridge")
        self.ns.ip("link", "set", "br0", "up")
        return self

    def attach(self, ns: Netns, v4: str, v6: str) -> None:
        self._ports += 1
        outer, inner = f"{self.prefix}p{self._ports}", f"{self.prefix}q{self._ports}"
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", outer, "netns", self.ns.name)
        run("ip", "link", "set", inner, "netns", ns.name)
        self.ns.ip("link", "set", outer, "master", "br0", "up")
        ns.ip("link", "set", inner, "name", "eth0")
        ns.ip("addr", "add", f"{v4}/24", "dev", "eth0")
        ns.ip("addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        ns.ip("link", "set", "eth0", "up")
