"""The whole network-tier set-up: LAN, hub, devices A and B, an internet attacker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import provisioning
from twelvefactor_services.hub.service import Settings, init, load_settings, registry_target
from twelvefactor_services.management import registry
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import Pki

from testbed.network.device import Device
from testbed.network.netns import Lan, Netns, tag
from testbed.proc import TestbedError, read_log, stop
from testbed.shipped_hub import start_hub

TUNNEL_V4 = "10.99.0.0/24"
TUNNEL_V6 = "fd00:99::/64"
HUB_UNDERLAY = ("192.0.2.1", "2001:db8:2::1")
INTERNET = ("192.0.2.66", "2001:db8:2::66")
# addresses "beyond" the internet router, held on its loopback: a device's
# default route leads there, so only the device's firewall stops the traffic
FAR = ("198.51.100.7", "2001:db8:ff::7")
DEVICES = {"dev-a": ("192.0.2.10", "2001:db8:2::10"), "dev-b": ("192.0.2.11", "2001:db8:2::11")}
WG_PORT = 51820
PORTS = {"management_mqtt": 8883, "solution_mqtt": 8884, "management_https": 8443}
# The hub forgets a peer quiet this long (the devices' keepalive is 25 s);
# shorter than the default so test_clock_went_back.py waits less.
STALE_AFTER = 40.0


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = tag()
        self.prefix = f"tfn{self.tag}"
        self.lan = Lan(self.prefix)
        self.hub_ns = Netns(f"{self.prefix}-hub")
        self.inet = Netns(f"{self.prefix}-inet")
        self.hub_root = root / "hub"
        self.hub_if = f"tnh{self.tag}"
        self.devices: dict[str, Device] = {}
        self._hub: subprocess.Popen[bytes] | None = None
        self.hub_info: dict[str, Any] = {}
        self._namespaces = [self.lan.ns, self.hub_ns, self.inet]
        self._blank: list[Device] = []  # devices made by blank_device(), for close()

    # -- set-up -------------------------------------------------------------------

    def start(self) -> Lab:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.lan.create()
        for ns in (self.hub_ns, self.inet):
            ns.create()
        self.lan.attach(self.hub_ns, *HUB_UNDERLAY)
        self.lan.attach(self.inet, *INTERNET)
        self.inet.ip("addr", "add", f"{FAR[0]}/32", "dev", "lo")
        self.inet.ip("addr", "add", f"{FAR[1]}/128", "dev", "lo")
        self.inet.sysctl("net.ipv4.ip_forward", "1")
        # The hub forwards (as a router would): only its nftables table keeps
        # spokes apart, which is what the isolation tests prove.
        self.hub_ns.sysctl("net.ipv4.ip_forward", "1")
        self.hub_ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        init(
            self.hub_root,
            Settings(
                TUNNEL_V4,
                TUNNEL_V6,
                WG_PORT,
                PORTS["management_mqtt"],
                PORTS["solution_mqtt"],
                PORTS["management_https"],
                STALE_AFTER,
            ),
        )
        pki = Pki(self.hub_root / "pki")
        db = Db(registry_target(self.hub_root))
        peers = PeerStore(db)
        settings = load_settings(self.hub_root)
        hub_public = (self.hub_root / "hub" / "wg.pub").read_text().strip()
        for letter, (device_id, (v4, v6)) in zip("ab", DEVICES.items(), strict=True):
            dev = self._on_the_lan(device_id, letter, v4, v6)
            self.devices[device_id] = dev
            peer = peers.add(settings.tunnel, device_id, dev.wg_public)
            conf = provisioning(
                peer,
                settings.tunnel,
                hub_endpoint=HUB_UNDERLAY[0],
                hub_port=WG_PORT,
                hub_public_key=hub_public,
                ports=settings.ports,
            )
            dev.provision(conf, pki.device(device_id).cert.parent)
        db.close()
        self._hub, self.hub_info = start_hub(
            self.hub_ns.name, self.hub_root, self.hub_if, self.root / "hub.log"
        )
        for dev in self.devices.values():
            dev.load_firewall()
            dev.render()
            dev.bring_up_tunnel(self.root / f"{dev.id}-wireguard-go.log")
            dev.write_agent_config(
                self.hub_info["address_v4"],
                self.hub_info["management_port"],
                self.hub_info["solution_port"],
            )
            dev.start_agent(self.root / f"{dev.id}-agent.log")
        for dev in self.devices.values():
            self.wait_online(dev)

    def blank_device(self, device_id: str, letter: str, v4: str, v6: str) -> Device:
        """A device namespace on the LAN with nothing on its /data yet: no identity, no
        tunnel, no peer at the hub (enrolment's starting point, docs/enrolment.md)."""
        dev = self._on_the_lan(device_id, letter, v4, v6)
        self._blank.append(dev)
        return dev

    def _on_the_lan(self, device_id: str, letter: str, v4: str, v6: str) -> Device:
        """A device's namespace, attached to the LAN with its underlay addresses."""
        ns = Netns(f"{self.prefix}-{letter}")
        self._namespaces.append(ns)
        ns.create()
        self.lan.attach(ns, v4, v6)
        # the underlay's router (DHCP would say so on a real network)
        ns.ip("route", "add", "default", "via", INTERNET[0])
        ns.ip("-6", "route", "add", "default", "via", INTERNET[1])
        return Device(ns, device_id, self.root / device_id, f"tn{letter}{self.tag}")

    def wait_online(self, dev: Device, timeout: float = 90) -> None:
        wait_online(dev, self.registry_device, self.hub_log, timeout)

    # -- views --------------------------------------------------------------------

    @property
    def a(self) -> Device:
        return self.devices["dev-a"]

    @property
    def b(self) -> Device:
        return self.devices["dev-b"]

    def hub_log(self) -> str:
        return read_log(self.root / "hub.log")[-4000:]

    def registry_device(self, device_id: str) -> dict[str, Any] | None:
        db = Db(self.hub_info["registry"], migrate=False)
        try:
            return registry.get_device(db, device_id)
        finally:
            db.close()

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's online history in the registry, oldest first."""
        db = Db(self.hub_info["registry"], migrate=False)
        try:
            return registry.history(db, device_id)
        finally:
            db.close()

    def archived(self, device_id: str) -> list[dict[str, Any]]:
        """The device's records in the solution service's archive, in the order archived."""
        out = []
        for path in sorted(Path(self.hub_info["archive_dir"]).rglob("*")):
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    rec = json.loads(line)
                    if isinstance(rec, dict) and rec.get("device") == device_id:
                        out.append(rec)
        return out

    def reaches_broker(self, dev: Device, timeout: float = 3) -> bool:
        """Can `dev` open a TCP connection to the broker's management listener
        on the hub's tunnel address (a fresh connection, not the agent's)?"""
        host, port = self.hub_info["address_v4"], self.hub_info["management_port"]
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), {timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = subprocess.run(dev.ns.argv(sys.executable, "-c", code), check=False)
        return done.returncode == 0

    def tunnel_address(self, device_id: str, version: int = 4) -> str:
        t = self.devices[device_id].tunnel
        assert t is not None
        found = [a.split("/")[0] for a in t.addresses if (":" in a) == (version == 6)]
        return found[0]

    # -- tear-down ----------------------------------------------------------------

    def close(self) -> None:
        for dev in [*self.devices.values(), *self._blank]:
            dev.close()
        stop(self._hub, 30)
        self._hub = None
        for ns in reversed(self._namespaces):
            ns.delete()


def wait_online(
    dev: Device,
    recorded: Callable[[str], dict[str, Any] | None],
    hub_log: Callable[[], str],
    timeout: float = 90,
) -> None:
    """Both sessions up, and the management service has recorded the device online
    (it does so a moment after the agent's CONNACK: a test reading the registry
    right away saw no device at all)."""
    deadline = time.monotonic() + timeout
    while True:
        status = dev.status()
        if status["management"] == "online" and status["solution"] == "online":
            shown = recorded(dev.id)
            if shown is not None and shown["online"] is True:
                return
        if time.monotonic() > deadline:
            tail = read_log(dev.agent_log)[-3000:] if dev.agent_log else ""
            raise TestbedError(
                f"{dev.id} not online through the tunnel: {status}, "
                f"registry: {recorded(dev.id)}\n"
                f"agent log {dev.agent_log}:\n{tail}\nhub:\n{hub_log()[-4000:]}"
            )
        time.sleep(0.2)


def make_lab() -> tuple[Lab, Path]:
    root = Path(tempfile.mkdtemp(prefix="tf-network-"))
    return Lab(root), root


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
