"""Two hub shards on one LAN (issue 15, item 3): each hub its own namespace, WireGuard
interface, broker and service copies, both on one management database; a device on each.

The hubs are the shipped `twelvefactor-hub serve` (testbed/shipped_hub.py), made with
`init`'s `registry` and `shard` settings; the devices are the network tier's (real
agent, the layer's firewall, wireguard-go), each a peer of its own shard's hub only.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import provisioning
from twelvefactor_services.hub.service import Settings, init, load_settings
from twelvefactor_services.management import registry
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import Pki

from testbed.network.device import Device
from testbed.network.lab import PORTS, STALE_AFTER, WG_PORT, wait_online
from testbed.network.netns import Lan, Netns, tag
from testbed.proc import read_log, stop
from testbed.shipped_hub import start_hub

# shard: (hub underlay v4, v6; tunnel networks, each shard its own)
SHARDS = {
    "one": ("192.0.2.1", "2001:db8:2::1", "10.99.0.0/24", "fd00:99::/64"),
    "two": ("192.0.2.2", "2001:db8:2::2", "10.98.0.0/24", "fd00:98::/64"),
}
# device: (its shard, underlay v4, v6)
DEVICES = {
    "dev-s1": ("one", "192.0.2.20", "2001:db8:2::20"),
    "dev-s2": ("two", "192.0.2.21", "2001:db8:2::21"),
}


class ShardLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = tag()
        self.prefix = f"tfs{self.tag}"
        self.lan = Lan(self.prefix)
        self.registry = root / "registry.db"  # both hubs' (a file: both run on this host)
        self.hubs = {name: Netns(f"{self.prefix}-{name[0]}{i}") for i, name in enumerate(SHARDS)}
        self.interfaces = {name: f"tsh{i}{self.tag}" for i, name in enumerate(SHARDS)}
        self.hub_info: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, Device] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[Netns] = [self.lan.ns, *self.hubs.values()]
        self.online_seconds = 0.0  # from the agents' start to both devices online, measured

    def hub_root(self, shard: str) -> Path:
        return self.root / f"hub-{shard}"

    def start(self) -> ShardLab:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.lan.create()
        for shard, (v4, v6, tunnel_v4, tunnel_v6) in SHARDS.items():
            ns = self.hubs[shard]
            ns.create()
            self.lan.attach(ns, v4, v6)
            init(
                self.hub_root(shard),
                Settings(
                    tunnel_v4,
                    tunnel_v6,
                    WG_PORT,
                    PORTS["management_mqtt"],
                    PORTS["solution_mqtt"],
                    PORTS["management_https"],
                    STALE_AFTER,
                    registry=str(self.registry),
                    shard=shard,
                ),
            )
        db = Db(self.registry)
        try:
            for i, (device, (shard, v4, v6)) in enumerate(DEVICES.items()):
                ns = Netns(f"{self.prefix}-d{i}")
                self._namespaces.append(ns)
                ns.create()
                self.lan.attach(ns, v4, v6)
                dev = Device(ns, device, self.root / device, f"tsd{i}{self.tag}")
                self.devices[device] = dev
                settings = load_settings(self.hub_root(shard))
                peer = PeerStore(db, shard).add(settings.tunnel, device, dev.wg_public)
                hub_public = (self.hub_root(shard) / "hub" / "wg.pub").read_text().strip()
                conf = provisioning(
                    peer,
                    settings.tunnel,
                    hub_endpoint=SHARDS[shard][0],
                    hub_port=WG_PORT,
                    hub_public_key=hub_public,
                    ports=settings.ports,
                )
                dev.provision(conf, Pki(self.hub_root(shard) / "pki").device(device).cert.parent)
        finally:
            db.close()
        for shard, ns in self.hubs.items():
            proc, info = start_hub(
                ns.name, self.hub_root(shard), self.interfaces[shard], self.root / f"{shard}.log"
            )
            self._procs.append(proc)
            self.hub_info[shard] = info
        for device, dev in self.devices.items():
            info = self.hub_info[DEVICES[device][0]]
            dev.load_firewall()
            dev.render()
            dev.bring_up_tunnel(self.root / f"{device}-wireguard-go.log")
            dev.write_agent_config(
                info["address_v4"], info["management_port"], info["solution_port"]
            )
            dev.start_agent(self.root / f"{device}-agent.log")
        started = time.monotonic()
        for dev in self.devices.values():
            self.wait_online(dev)
        self.online_seconds = time.monotonic() - started

    def wait_online(self, dev: Device, timeout: float = 90) -> None:
        wait_online(dev, self.device, lambda: self.log(DEVICES[dev.id][0]), timeout)

    def device(self, device: str) -> dict[str, Any] | None:
        """The device as the one fleet's registry shows it."""
        db = Db(self.registry, migrate=False)
        try:
            return registry.get_device(db, device)
        finally:
            db.close()

    def log(self, shard: str) -> str:
        """What shard's hub and its services wrote."""
        services = self.hub_root(shard) / "management"
        return read_log(self.root / f"{shard}.log") + "".join(
            read_log(p) for p in sorted(services.glob("management-*.log"))
        )

    def close(self) -> None:
        for dev in self.devices.values():
            dev.close()
        for proc in self._procs:
            stop(proc, 30)
        self._procs = []
        for ns in reversed(self._namespaces):
            ns.delete()
