"""The hub a booted device talks to: the shipped hub (`twelvefactor-hub serve`)
in a network namespace of its own, on the device's link.

The hub is the one users run (twelvefactor_services.hub): wireguard-go with
its peers from the registry, the hub's nftables table (spoke to spoke never
forwarded; from a spoke only the service ports), the forgetting of quiet
peers, mosquitto with TLS on the hub's tunnel address only, the management
and solution services and SNTP. The network tier's lab runs the same hub
(testbed/network/lab.py). QEMU runs inside the same namespace, its NIC a tap
on the device's link (underlay.py): the device's tunnel endpoint is
UNDERLAY_HOST:WG_PORT, so MQTT reaches the broker through the tunnel or not
at all. The management service's HTTP API listens on the namespace's
loopback only; the tests reach it with a socket opened inside the namespace.
Names are unique per test process: wireguard-go keeps its control sockets
in /var/run/wireguard, shared by every namespace.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import TABLE, Peer
from twelvefactor_services.hub.service import Settings, init, load_settings, registry_target
from twelvefactor_services.management.api_client import ManagementClient
from twelvefactor_services.management.store import Db
from twelvefactor_services.solution.receivers import read_archive

from refimage import provision
from testbed.boot.underlay import SPOKE_UNDERLAY, UNDERLAY_HOST, Underlay
from testbed.proc import TestbedError, stop, tail
from testbed.proc import run as _run
from testbed.shipped_hub import START_TIMEOUT, start_hub

TUNNEL_NETWORK = "10.77.0.0/24"
HUB_ADDRESS = "10.77.0.1"  # the hub's address in the tunnel network (its first)
WG_PORT = 51820
PORTS = {"management_mqtt": 8883, "solution_mqtt": 8884, "management_https": 8443}
# longer than the update test's 45 s link cut, so that only a device that
# is off or locked out is forgotten
STALE_AFTER = 60.0
CLONE_NEWNET = 0x40000000


class HubError(TestbedError):
    pass


def start_wireguard_go(netns: str, ifname: str, log: Path) -> subprocess.Popen[bytes]:
    """wireguard-go in `netns`, once its interface exists."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "wireguard-go", "-f", ifname],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    show = ["ip", "-n", netns, "link", "show", ifname]
    while subprocess.run(show, capture_output=True, check=False).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise HubError(f"wireguard-go did not create {ifname} in {netns}")
        time.sleep(0.1)
    return proc


def connect_in_netns(netns: str, host: str, port: int, timeout: float = 30) -> socket.socket:
    """A TCP connection made from inside `netns` (a socket keeps the namespace
    it was made in): a thread of its own joins the namespace, connects, ends."""
    result: list[socket.socket | BaseException] = []

    def connect() -> None:
        try:
            with open(f"/run/netns/{netns}") as ns:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            result.append(socket.create_connection((host, port), timeout))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class _NetnsHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:port inside a network namespace."""

    def __init__(self, netns: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self.netns = netns
        self.tls = context

    def connect(self) -> None:
        sock = connect_in_netns(self.netns, "127.0.0.1", self.port or 443)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class _NetnsClient(ManagementClient):
    """The operator API of the hub's management service, reached inside the hub's namespace."""

    def __init__(self, netns: str, port: int, token: str, ca: Path) -> None:
        super().__init__(f"https://127.0.0.1:{port}", token=token, ca=ca, timeout=30)
        self.netns = netns

    def _connection(self) -> http.client.HTTPSConnection:
        return _NetnsHTTPSConnection(self.netns, self.port, self.context, self.timeout)


class Hub:
    def __init__(self, root: Path, *, local_ports: tuple[int, int] | None = None) -> None:
        """`local_ports`: the namespace's range for ports picked free (its services'
        HTTP API among them), when they must not collide with the host's (the demo
        relays the API to the host at the same port); None keeps the kernel's default."""
        self.root = root
        self.local_ports = local_ports
        root.mkdir(parents=True, exist_ok=True)
        tag = os.getpid() % 100000
        self.netns = f"tfboot-{tag}"
        self.ifname = f"tfb{tag}"
        self.info: dict[str, Any] = {}
        self._api: ManagementClient | None = None
        self.public_key = ""
        self._hub: subprocess.Popen[bytes] | None = None
        self.underlay = Underlay(root, self.netns, tag)
        self.spoke_netns = f"tfspoke-{tag}"
        self._spoke_wg: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        # A hub host routes (as the network lab's does): only the shipped hub's own
        # nftables table keeps spokes apart, and the scans prove that it does.
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            _run("ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{key}=1")
        if self.local_ports is not None:
            low, high = self.local_ports
            key = "net.ipv4.ip_local_port_range"
            _run("ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{key}={low} {high}")
        self.public_key = init(
            self.root,
            Settings(
                TUNNEL_NETWORK,
                None,
                WG_PORT,
                PORTS["management_mqtt"],
                PORTS["solution_mqtt"],
                PORTS["management_https"],
                STALE_AFTER,
            ),
        )
        self.underlay.start()
        self._hub, self.info = start_hub(self.netns, self.root, self.ifname, self.root / "hub.log")
        self._api = None  # its ports and token are in the new info
        if self.info["address_v4"] != HUB_ADDRESS:
            raise HubError(
                f"the hub took {self.info['address_v4']}, the tests expect {HUB_ADDRESS}"
            )

    def stop(self) -> None:
        for proc in (self._hub, self._spoke_wg):
            stop(proc)
        self._hub = self._spoke_wg = None
        self.underlay.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.root / "hub.log", lines)

    def forward_drops(self) -> int:
        """Packets the shipped hub's forward chain dropped from a spoke (its counter)."""
        out = _run(
            "ip",
            "netns",
            "exec",
            self.netns,
            "nft",
            "-j",
            "list",
            "chain",
            "inet",
            TABLE,
            "forward",
        )
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == "from a spoke: never forwarded":
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        raise HubError("the hub's forward chain has no 'from a spoke' counter")

    def _wg_cmd(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.netns, "wg", *args)

    # -- devices ------------------------------------------------------------------

    def add_device(self, device_id: str, public_key: str) -> Peer:
        """Register the device's key in the registry, as an operator does
        (`twelvefactor-hub peer`); the running hub applies it within a second.
        The peer gets one /32 (AllowedIPs): it cannot send from another's address."""
        db = Db(registry_target(self.root))
        try:
            peer = PeerStore(db).add(load_settings(self.root).tunnel, device_id, public_key)
        finally:
            db.close()
        deadline = time.monotonic() + START_TIMEOUT
        while public_key not in self._wg_cmd("show", self.ifname, "peers"):
            if self._hub is None or self._hub.poll() is not None or time.monotonic() > deadline:
                raise HubError(f"the hub did not apply the peer {device_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        return peer

    def add_spoke(self) -> tuple[str, str]:
        """Another device: a namespace on the link with its own WireGuard peer
        of this hub, handshake done. Its namespace's name and tunnel address."""
        ns = self.spoke_netns
        ifname = f"tfs{self.netns.rpartition('-')[2]}"
        self.underlay.add_neighbour(ns, SPOKE_UNDERLAY)
        self._spoke_wg = start_wireguard_go(ns, ifname, self.root / "spoke-wireguard-go.log")
        private, public = provision.wg_keypair()
        key_file = self.root / "spoke-wg.key"
        key_file.touch(mode=0o600)
        key_file.write_text(private + "\n")
        peer = self.add_device("boot-spoke", public)
        wg = ("ip", "netns", "exec", ns, "wg", "set", ifname)
        _run(*wg, "private-key", str(key_file))
        _run(*wg, "peer", self.public_key, "endpoint", f"{UNDERLAY_HOST}:{WG_PORT}",
             "allowed-ips", TUNNEL_NETWORK, "persistent-keepalive", "5")  # fmt: skip
        prefix = TUNNEL_NETWORK.split("/")[1]
        _run("ip", "-n", ns, "addr", "add", f"{peer.address_v4}/{prefix}", "dev", ifname)
        _run("ip", "-n", ns, "link", "set", ifname, "up")
        deadline = time.monotonic() + 30
        while not self.latest_handshake(public):
            if time.monotonic() > deadline:
                raise HubError("the spoke's WireGuard did not complete a handshake with the hub")
            time.sleep(0.2)
        return ns, str(peer.address_v4)

    def set_link(self, up: bool) -> None:
        """Cut (or restore) the tunnel on the hub's side: its WireGuard interface down."""
        _run("ip", "-n", self.netns, "link", "set", self.ifname, "up" if up else "down")

    def endpoint(self, public_key: str) -> tuple[str, int] | None:
        """Where the hub last heard the peer from (its address and port on the link)."""
        for line in self._wg_cmd("show", self.ifname, "endpoints").splitlines():
            key, _, endpoint = line.partition("\t")
            if key == public_key and endpoint != "(none)":
                host, _, port = endpoint.rpartition(":")
                return host.strip("[]"), int(port)
        return None

    def latest_handshake(self, public_key: str) -> int:
        for line in self._wg_cmd("show", self.ifname, "latest-handshakes").splitlines():
            key, _, stamp = line.partition("\t")
            if key == public_key:
                return int(stamp)
        return 0

    def forgot(self, device_id: str) -> bool:
        """Whether the hub forgot the device's handshake state (hub/stale.py) in this run."""
        pattern = re.compile(r"forgot the handshake state of ([^:]+):")
        return any(
            device_id in m.group(1).split(", ") for m in pattern.finditer(self.log_tail(100000))
        )

    @property
    def pki_dir(self) -> Path:
        return Path(self.info["pki_dir"])

    @property
    def archive_dir(self) -> Path:
        return Path(self.info["archive_dir"])

    def management_get(self, path: str) -> tuple[int, Any]:
        """GET from the management service's HTTP API (on the namespace's loopback)."""
        return self.management_send("GET", path)

    def management_send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to the management service's operator API as the hub's admin."""
        return self.api.request(method, path, body)

    @property
    def api(self) -> ManagementClient:
        if self._api is None:
            token = Path(self.info["admin_token_file"]).read_text().strip()
            ca = Path(self.info["pki_dir"]) / "ca.crt"
            self._api = _NetnsClient(self.netns, int(self.info["management_api_port"]), token, ca)
        return self._api

    # -- updates ------------------------------------------------------------------

    def add_artifact(self, swu: Path) -> dict[str, Any]:
        """Upload a .swu through the operator API (version and hardware read from it)."""
        artifact: dict[str, Any] = self.api.upload("/artifacts", swu, {})
        return artifact

    def add_delta(self, sha256: str, delta: Path, zck: Path) -> dict[str, Any]:
        """Give artifact `sha256` its delta: the .zck first, then the delta .swu."""
        self.api.upload(f"/artifacts/{sha256}/zck", zck, {})
        artifact: dict[str, Any] = self.api.upload(f"/artifacts/{sha256}/delta", delta, {})
        return artifact

    @property
    def artifact_url(self) -> str:
        """The management service's artifact server as devices reach it, in the tunnel."""
        return f"https://{HUB_ADDRESS}:{self.info['management_https_port']}"

    def stored(self, name: str) -> Path:
        """A file of the management service's artifact store (the tests alter one)."""
        found = sorted(self.root.rglob(name))
        if len(found) != 1:
            raise HubError(f"{name}: {len(found)} in the hub's store")
        return found[0]

    def create_job(self, sha256: str, device_id: str, *, download_only: bool = False) -> str:
        request = {"artifact": sha256, "device": device_id, "download_only": download_only}
        status, body = self.management_send("POST", "/jobs", request)
        if status != 201 or not isinstance(body, dict):
            raise HubError(f"POST /jobs: {status} {body}")
        return str(body["id"])

    def job_state(self, job_id: str, device_id: str) -> dict[str, Any]:
        """The device's state in the job: {"state", "percent", "reason", ...}."""
        status, body = self.management_get(f"/jobs/{job_id}")
        if status != 200 or not isinstance(body, dict):
            raise HubError(f"GET /jobs/{job_id}: {status} {body}")
        for entry in body.get("devices", []):
            if entry.get("device") == device_id:
                return dict(entry)
        raise HubError(f"job {job_id} has no device {device_id}: {body}")

    def service_logs(self) -> str:
        """Everything the hub's services logged (the artifact server's requests included)."""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.root.rglob("*.log")) if p.is_file()
        )

    def device(self, device_id: str) -> dict[str, Any] | None:
        status, body = self.management_get(f"/devices/{device_id}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise HubError(f"management /devices/{device_id}: {status} {body}")
        return body

    def archived(self, device_id: str) -> list[dict[str, Any]]:
        """Every record of the device in the solution service's archive (whole lines)."""
        return read_archive(self.archive_dir / f"{device_id}.jsonl")
