"""A device in a namespace, configured by the layer's own files.

The layer's nftables ruleset is loaded as shipped; the layer's
twelvefactor-netconfig renders the tunnel from a provisioning file into a
scratch root (its `--root` option) and fills the ruleset's sets in the
device's namespace. systemd-networkd does not run in a namespace, so this
module reads the rendered .netdev/.network and applies exactly those values
with `wg` and `ip`; wireguard-go stands in for the kernel module, which this
host's kernel lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_agent.localapi.client import AgentClient

from refimage import layer_files
from testbed.network.netns import Netns
from testbed.proc import TestbedError, run, stop


def _layer_source(dest: str) -> Path:
    """The repository file the layer's recipes install at `dest` on the device."""
    for f in layer_files.device_files():
        if f.dest == dest:
            return f.source
    raise TestbedError(f"no layer recipe installs {dest}")


RULESET = _layer_source("/etc/nftables/twelvefactor.nft")
RENDERER = _layer_source("/usr/sbin/twelvefactor-netconfig")
TEMPLATES = _layer_source(
    "/usr/share/twelvefactor/netconfig/50-twelvefactor-tunnel.netdev.in"
).parent
AGENT_TEMPLATE = _layer_source("/etc/twelvefactor/agent.toml")
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
NETDEV = "run/systemd/network/50-twelvefactor-tunnel.netdev"
NETWORK = "run/systemd/network/50-twelvefactor-tunnel.network"
TIMESYNCD = "run/systemd/timesyncd.conf.d/50-twelvefactor.conf"
# the lab agents' reconnect backoff (seconds): short, so that tests wait for work, not timers
AGENT_BACKOFF = {"initial": 0.5, "multiplier": 2.0, "cap": 2.0}


def unit_file(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit-style file, in order (keys repeat)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise TestbedError(f"not a unit-file line: {raw!r}")
        out.append((section, key.strip(), value.strip()))
    return out


def values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def one(entries: list[tuple[str, str, str]], section: str, key: str) -> str:
    found = values(entries, section, key)
    if len(found) != 1:
        raise TestbedError(f"[{section}] {key}: expected one value, found {found}")
    return found[0]


@dataclass
class Tunnel:
    """What the renderer produced, as networkd would apply it."""

    name: str
    private_key_file: str
    listen_port: int
    peer_key: str
    endpoint: str
    allowed_ips: list[str]
    keepalive: str
    addresses: list[str]


def rendered_tunnel(root: Path) -> Tunnel:
    netdev = unit_file((root / NETDEV).read_text())
    network = unit_file((root / NETWORK).read_text())
    return Tunnel(
        name=one(netdev, "NetDev", "Name"),
        private_key_file=one(netdev, "WireGuard", "PrivateKeyFile"),
        listen_port=int(one(netdev, "WireGuard", "ListenPort")),
        peer_key=one(netdev, "WireGuardPeer", "PublicKey"),
        endpoint=one(netdev, "WireGuardPeer", "Endpoint"),
        allowed_ips=[a.strip() for a in one(netdev, "WireGuardPeer", "AllowedIPs").split(",")],
        keepalive=one(netdev, "WireGuardPeer", "PersistentKeepalive"),
        addresses=values(network, "Network", "Address"),
    )


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for table, items in doc.items():
        lines.append(f"[{table}]")
        for key, value in items.items():
            if isinstance(value, str):
                text = f'"{value}"'
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


class Device:
    def __init__(self, ns: Netns, device_id: str, root: Path, wg_tmp_name: str) -> None:
        self.ns = ns
        self.id = device_id
        self.root = root  # stands for the device's /: data/, run/ below it
        self.wg_tmp_name = wg_tmp_name  # unique: names the wireguard-go control socket
        self.tunnel: Tunnel | None = None
        self._wg: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log: Path | None = None
        self.sock_dir = Path(f"/tmp/{ns.name}")  # sun_path is short
        self.sock_dir.mkdir(exist_ok=True)
        (root / "data" / "identity").mkdir(parents=True, exist_ok=True)
        (root / "data" / "provisioning").mkdir(parents=True, exist_ok=True)
        (root / "data" / "config").mkdir(parents=True, exist_ok=True)
        (root / "data" / "agent").mkdir(parents=True, exist_ok=True)
        (root / "run").mkdir(parents=True, exist_ok=True)
        self.wg_private = run("wg", "genkey").strip()
        self.wg_public = run("wg", "pubkey", input_text=self.wg_private + "\n").strip()

    @property
    def mac(self) -> str:
        address: str = json.loads(self.ns.ip("-j", "link", "show", "eth0"))[0]["address"]
        return address

    def data(self, rel: str) -> Path:
        return self.root / "data" / rel

    def on_device(self, device_path: str) -> Path:
        """A device path as a file under this device's scratch root."""
        return self.root / device_path.lstrip("/")

    # -- provisioning and network --------------------------------------------------

    def provision(self, network_conf: str, cert_dir: Path) -> None:
        key = self.data("identity/wg.key")
        key.write_text(self.wg_private + "\n")
        key.chmod(0o600)
        self.data("provisioning/network.conf").write_text(network_conf)
        for name in ("device.crt", "device.key", "ca.crt"):
            shutil.copy2(cert_dir / name, self.data(f"identity/{name}"))

    def load_firewall(self) -> None:
        self.ns.exec("nft", "-f", str(RULESET))

    def render(self) -> Tunnel:
        """The layer's renderer: files under the scratch root, sets in the namespace."""
        self.ns.exec(
            sys.executable,
            str(RENDERER),
            "--provisioning",
            str(self.data("provisioning/network.conf")),
            "--templates",
            str(TEMPLATES),
            "--root",
            str(self.root),
        )
        self.tunnel = rendered_tunnel(self.root)
        return self.tunnel

    def bring_up_tunnel(self, log: Path) -> None:
        t = self.tunnel or self.render()
        self._wg = self.ns.popen(["wireguard-go", "-f", self.wg_tmp_name], log)
        self.ns.wait_link(self.wg_tmp_name, self._wg)
        self.wg(
            "set",
            "private-key",
            str(self.on_device(t.private_key_file)),
            "listen-port",
            str(t.listen_port),
        )
        self._set_peer(t)
        self.ns.ip("link", "set", self.wg_tmp_name, "name", t.name)
        for address in t.addresses:
            self.ns.ip(
                "addr", "add", address, "dev", t.name, *(["nodad"] if ":" in address else [])
            )
        self.ns.ip("link", "set", t.name, "up")
        for allowed in t.allowed_ips:  # RouteTable=main: a route per AllowedIPs entry
            self.ns.ip("route", "replace", allowed, "dev", t.name)

    def _set_peer(self, t: Tunnel) -> None:
        self.wg(
            "set",
            "peer",
            t.peer_key,
            "endpoint",
            t.endpoint,
            "allowed-ips",
            ",".join(t.allowed_ips),
            "persistent-keepalive",
            t.keepalive,
        )

    def drop_session(self) -> None:
        """The hub peer removed and added again: the session is gone and the next
        packet needs a new handshake (what a reboot does to the tunnel)."""
        t = self.tunnel
        if t is None:
            raise TestbedError(f"{self.id} has no tunnel")
        self.wg("set", "peer", t.peer_key, "remove")
        self._set_peer(t)

    def wg(self, *args: str) -> str:
        """`wg` on this device's interface (found by its control socket's name)."""
        cmd, rest = args[0], args[1:]
        return self.ns.exec("wg", cmd, self.wg_tmp_name, *rest)

    # -- the agent ----------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.sock_dir / "agent.sock"

    def write_agent_config(
        self, host: str, management_port: int, solution_port: int, **overrides: dict[str, Any]
    ) -> Path:
        """The layer's agent.toml with this device's values, as provisioning writes it."""
        doc: dict[str, dict[str, Any]] = tomllib.loads(AGENT_TEMPLATE.read_text())
        doc["device"].update(
            id=self.id,
            certificate=str(self.data("identity/device.crt")),
            key=str(self.data("identity/device.key")),
            ca=str(self.data("identity/ca.crt")),
        )
        doc["management"] = {"host": host, "port": management_port}
        doc["solution"] = {"host": host, "port": solution_port}
        self.lab_settings(doc)
        doc["agent"]["confirm_window"] = 20
        for table, items in overrides.items():
            doc.setdefault(table, {}).update(items)
        path = self.data("config/agent.toml")
        path.write_text(_toml(doc))
        return path

    def lab_settings(self, doc: dict[str, dict[str, Any]]) -> None:
        """An agent.toml's on-host paths and the lab's short intervals, in place."""
        doc["agent"].pop("socket_group", None)  # no such group on the test host
        doc["agent"].update(
            data_dir=str(self.data("agent")),
            socket=str(self.socket),
            state_file=str(self.root / "run" / "state.json"),
            health_interval=5,
            health_heartbeat=5,
            keepalive=10,
        )
        doc["backoff"] = dict(AGENT_BACKOFF)

    def start_agent(
        self,
        log: Path,
        *,
        config: Path | None = None,
        faketime: str | None = None,
        faketime_file: Path | None = None,
    ) -> None:
        """Start the agent; `faketime` fakes its clock (a libfaketime spec),
        `faketime_file` too, from a file the test may rewrite to set the clock
        while it runs (the monotonic clock stays real, as when NTP sets a clock)."""
        if self.agent is not None and self.agent.poll() is None:
            raise TestbedError(f"agent of {self.id} already runs")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if faketime is not None:
            # libfaketime preloaded into the agent itself (the `faketime` wrapper
            # would stand between SIGTERM and the agent); the MT build for its threads
            env |= {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": faketime}
        if faketime_file is not None:
            env |= {
                "LD_PRELOAD": FAKETIME_LIB,
                "FAKETIME_TIMESTAMP_FILE": str(faketime_file),
                "FAKETIME_NO_CACHE": "1",
                "DONT_FAKE_MONOTONIC": "1",
            }
        argv = [
            sys.executable,
            "-m",
            "twelvefactor_agent.cli",
            "run",
            "--config",
            str(config or self.data("config/agent.toml")),
        ]
        self.agent_log = log
        self.agent = self.ns.popen(argv, log, env=env)
        deadline = time.monotonic() + 60
        while True:
            if self.agent.poll() is not None:
                raise TestbedError(
                    f"agent of {self.id} exited ({self.agent.returncode}), see {log}"
                )
            try:
                self.client().status()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TestbedError(f"agent of {self.id} not answering on {self.socket}")
            time.sleep(0.1)

    def client(self) -> AgentClient:
        return AgentClient(str(self.socket))

    def status(self) -> dict[str, Any]:
        return self.client().status()

    def stop_agent(self) -> None:
        stop(self.agent, 20)
        self.agent = None

    def close(self) -> None:
        self.stop_agent()
        stop(self._wg)
        self._wg = None
        shutil.rmtree(self.sock_dir, ignore_errors=True)
