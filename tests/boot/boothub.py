"""The hub a booted device talks to: a network namespace holding WireGuard
(wireguard-go), mosquitto with TLS, the management and the solution service.

QEMU runs inside the same namespace with user-mode networking (slirp), so the
only thing the guest can reach is the namespace itself, as 10.0.2.2: the
device's tunnel endpoint is 10.0.2.2:WG_PORT, and the broker listens on the
hub's tunnel address only, so MQTT reaches it through the tunnel or not at all.
Names are unique per test run: wireguard-go keeps its control sockets in
/var/run/wireguard, shared by every namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HUB_ADDRESS = "10.77.0.1"
DEVICE_ADDRESS = "10.77.0.2"
PREFIX = 24
WG_PORT = 51820
SLIRP_HOST = "10.0.2.2"  # the namespace, as the guest sees it through slirp
HUB_STACK = Path(__file__).with_name("hub_stack.py")
START_TIMEOUT = 120.0


class HubError(RuntimeError):
    pass


def _run(*argv: str, input_text: str | None = None) -> str:
    done = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HubError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wg_keypair() -> tuple[str, str]:
    private = _run("wg", "genkey").strip()
    return private, _run("wg", "pubkey", input_text=private + "\n").strip()


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
        self._peers: list[str] = []

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
        wg_log = (self.root / "wireguard-go.log").open("ab")
        self._wg = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "wireguard-go", "-f", self.ifname],
            stdout=wg_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while subprocess.run(
            ["ip", "-n", self.netns, "link", "show", self.ifname], capture_output=True
        ).returncode:
            if self._wg.poll() is not None or time.monotonic() > deadline:
                raise HubError(f"wireguard-go did not create {self.ifname}")
            time.sleep(0.1)
        key_file = self.root / "hub-wg.key"
        key_file.touch(mode=0o600)
        key_file.write_text(self.private_key + "\n")
        self._wg_cmd("set", self.ifname, "private-key", str(key_file), "listen-port", str(WG_PORT))
        _run("ip", "-n", self.netns, "addr", "add", f"{HUB_ADDRESS}/{PREFIX}", "dev", self.ifname)
        _run("ip", "-n", self.netns, "link", "set", self.ifname, "up")
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

    def stop(self) -> None:
        for proc in (self._stack, self._wg):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._stack = self._wg = None
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
        """One /32 per device (AllowedIPs): spokes never reach each other."""
        self._wg_cmd("set", self.ifname, "peer", public_key, "allowed-ips", f"{address}/32")
        self._peers.append(public_key)

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
