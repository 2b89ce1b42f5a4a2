"""The hub a booted device talks to: a network namespace holding WireGuard
(wireguard-go), mosquitto with TLS, the management and the solution service.

QEMU runs inside the same namespace, its NIC a tap on the device's link
(underlay.py): the device's tunnel endpoint is UNDERLAY_HOST:WG_PORT, and the
broker listens on the hub's tunnel address only, so MQTT reaches it through
the tunnel or not at all. The hub loads the services hub's own nftables table
(spoke to spoke never forwarded; from a spoke only the service ports) and,
like it, forgets the handshake state of a peer gone quiet (hub/stale.py).
Names are unique per test run: wireguard-go keeps its control sockets in
/var/run/wireguard, shared by every namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_services.hub.plan import Tunnel, nft_ruleset
from twelvefactor_services.hub.stale import StaleTracker, parse_dump
from underlay import SPOKE_UNDERLAY, UNDERLAY_HOST, Underlay, UnderlayError, stop_process
from underlay import run as _run

HUB_ADDRESS = "10.77.0.1"
DEVICE_ADDRESS = "10.77.0.2"
SPOKE_ADDRESS = "10.77.0.3"  # another device (add_spoke)
TUNNEL_NETWORK = "10.77.0.0/24"
PREFIX = 24
WG_PORT = 51820
# longer than the update test's 45 s link cut, so that only a device that
# is off or locked out is forgotten
STALE_AFTER = 60.0
HUB_STACK = Path(__file__).with_name("hub_stack.py")
START_TIMEOUT = 120.0


class HubError(UnderlayError):
    pass


def wg_keypair() -> tuple[str, str]:
    private = _run("wg", "genkey").strip()
    return private, _run("wg", "pubkey", input_text=private + "\n").strip()


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


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(self.path))
        self.sock = sock


@dataclass
class DeviceKeys:
    private: str
    public: str


class Hub:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        tag = os.getpid() % 100000
        self.netns = f"tfboot-{tag}"
        self.ifname = f"tfb{tag}"
        self.private_key, self.public_key = wg_keypair()
        self.info: dict[str, Any] = {}
        self._wg: subprocess.Popen[bytes] | None = None
        self._stack: subprocess.Popen[bytes] | None = None
        self._peers: dict[str, str] = {}  # public key -> tunnel address
        self.underlay = Underlay(root, self.netns, tag)
        self.spoke_netns = f"tfspoke-{tag}"
        self._spoke_wg: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._forgetter: threading.Thread | None = None
        self.forgotten: list[str] = []  # public keys whose handshake state was dropped

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
        self._wg = start_wireguard_go(self.netns, self.ifname, self.root / "wireguard-go.log")
        key_file = self.root / "hub-wg.key"
        key_file.touch(mode=0o600)
        key_file.write_text(self.private_key + "\n")
        self._wg_cmd("set", self.ifname, "private-key", str(key_file), "listen-port", str(WG_PORT))
        _run("ip", "-n", self.netns, "addr", "add", f"{HUB_ADDRESS}/{PREFIX}", "dev", self.ifname)
        _run("ip", "-n", self.netns, "link", "set", self.ifname, "up")
        self.underlay.start()
        stack_log = (self.root / "hub_stack.log").open("ab")
        self._stack = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                str(HUB_STACK),
                str(self.root / "stack"),
                HUB_ADDRESS,
            ],
            stdout=stack_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        info = self.root / "stack" / "hub.json"
        deadline = time.monotonic() + START_TIMEOUT
        while not info.exists():
            if self._stack.poll() is not None or time.monotonic() > deadline:
                raise HubError(f"the hub's services did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.info = json.loads(info.read_text())
        ports = [int(self.info[k]) for k in ("management_port", "solution_port", "artifact_port")]
        ruleset = nft_ruleset(self.ifname, Tunnel.parse(TUNNEL_NETWORK), ports)
        _run("ip", "netns", "exec", self.netns, "nft", "-f", "-", input_text=ruleset)
        self._forgetter = threading.Thread(target=self._forget_quiet_peers, daemon=True)
        self._forgetter.start()

    def _forget_quiet_peers(self) -> None:
        """What the services hub does (hub/service.py): a peer that received
        something and then nothing for STALE_AFTER is removed and added again,
        so that WireGuard forgets the newest handshake time stamp it saw."""
        tracker = StaleTracker(STALE_AFTER)
        while not self._stopping.wait(1.0):
            try:
                rx = parse_dump(self._wg_cmd("show", self.ifname, "dump"))
                for key in tracker.observe(rx, time.monotonic()):
                    self._wg_cmd("set", self.ifname, "peer", key, "remove")
                    self._wg_cmd("set", self.ifname, "peer", key,
                                 "allowed-ips", f"{self._peers[key]}/32")  # fmt: skip
                    self.forgotten.append(key)
            except (UnderlayError, ValueError, KeyError) as exc:
                print(f"boothub: forgetting quiet peers: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stopping.set()
        if self._forgetter is not None:
            self._forgetter.join(10)
        for proc in (self._stack, self._wg, self._spoke_wg):
            stop_process(proc)
        self._stack = self._wg = self._spoke_wg = None
        self.underlay.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "hub_stack.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wg_cmd(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.netns, "wg", *args)

    # -- devices ------------------------------------------------------------------

    def add_device(self, public_key: str, address: str = DEVICE_ADDRESS) -> None:
        """One /32 per device (AllowedIPs): a device cannot send from another's address."""
        self._wg_cmd("set", self.ifname, "peer", public_key, "allowed-ips", f"{address}/32")
        self._peers[public_key] = address

    def add_spoke(self) -> str:
        """Another device: a namespace on the link with its own WireGuard peer
        of this hub at SPOKE_ADDRESS, handshake done. Its namespace's name."""
        ns = self.spoke_netns
        ifname = f"tfs{self.netns.rpartition('-')[2]}"
        self.underlay.add_neighbour(ns, SPOKE_UNDERLAY)
        self._spoke_wg = start_wireguard_go(ns, ifname, self.root / "spoke-wireguard-go.log")
        private, public = wg_keypair()
        key_file = self.root / "spoke-wg.key"
        key_file.touch(mode=0o600)
        key_file.write_text(private + "\n")
        self.add_device(public, SPOKE_ADDRESS)
        wg = ("ip", "netns", "exec", ns, "wg", "set", ifname)
        _run(*wg, "private-key", str(key_file))
        _run(*wg, "peer", self.public_key, "endpoint", f"{UNDERLAY_HOST}:{WG_PORT}",
             "allowed-ips", TUNNEL_NETWORK, "persistent-keepalive", "5")  # fmt: skip
        _run("ip", "-n", ns, "addr", "add", f"{SPOKE_ADDRESS}/{PREFIX}", "dev", ifname)
        _run("ip", "-n", ns, "link", "set", ifname, "up")
        deadline = time.monotonic() + 30
        while not self.latest_handshake(public):
            if time.monotonic() > deadline:
                raise HubError("the spoke's WireGuard did not complete a handshake with the hub")
            time.sleep(0.2)
        return ns

    def set_link(self, up: bool) -> None:
        """Cut (or restore) the tunnel on the hub's side: its WireGuard interface down."""
        _run("ip", "-n", self.netns, "link", "set", self.ifname, "up" if up else "down")

    def latest_handshake(self, public_key: str) -> int:
        for line in self._wg_cmd("show", self.ifname, "latest-handshakes").splitlines():
            key, _, stamp = line.partition("\t")
            if key == public_key:
                return int(stamp)
        return 0

    @property
    def pki_dir(self) -> Path:
        return Path(self.info["pki_dir"])

    @property
    def archive_dir(self) -> Path:
        return Path(self.info["archive_dir"])

    def management_get(self, path: str) -> tuple[int, Any]:
        """GET from the management service's HTTP API (through the Unix socket)."""
        return self.management_send("GET", path)

    def management_send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to the management service's HTTP API (through the Unix socket)."""
        conn = _UnixHTTPConnection(self.root / "stack" / "management.sock")
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if data is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    # -- updates ------------------------------------------------------------------

    def add_artifact(self, swu: Path) -> dict[str, Any]:
        """Store a .swu with the management service's CLI (version and hardware read from it)."""
        out = _run(
            sys.executable,
            "-m",
            "twelvefactor_services.management.cli",
            "artifact",
            "add",
            str(swu),
            "--db",
            str(self.info["registry_db"]),
        )
        artifact: dict[str, Any] = json.loads(out)
        return artifact

    def create_job(self, sha256: str, device_id: str) -> str:
        status, body = self.management_send(
            "POST", "/jobs", {"artifact": sha256, "device": device_id}
        )
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
        root = Path(self.info["log_dir"])
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(root.rglob("*.log")) if p.is_file()
        )

    def device(self, device_id: str) -> dict[str, Any] | None:
        status, body = self.management_get(f"/devices/{device_id}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise HubError(f"management /devices/{device_id}: {status} {body}")
        return body

    def archived(self, device_id: str) -> list[dict[str, Any]]:
        """Every record of the device in the solution service's archive."""
        records: list[dict[str, Any]] = []
        for path in sorted(self.archive_dir.rglob("*")):
            if not path.is_file():
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("device") == device_id:
                    records.append(rec)
        return records
