"""The demo's real device (`scripts/demo --qemu`): the reference image in QEMU, behind a hub.

One fleet in one console: with --qemu the demo's cloud is the shipped hub
(`twelvefactor-hub serve`, testbed/boot/hub.py) in a network namespace of its
own, with its broker and services; the QEMU device reaches them through a real
WireGuard tunnel, exactly as in the boot tier. The host agents run inside the
same namespace (`ip netns exec`) and dial the broker at the hub's tunnel
address, the name its certificate carries; their local API is a Unix socket,
which a namespace does not hide, so their applications stay on the host. The
operator API (and the console it serves) listens on the namespace's loopback
only: a relay on the host's loopback, at the same port (the API checks the
port in Host and Origin), opens its inside socket in the namespace.

QEMU runs with -no-reboot (a reboot ends the process, as a power supply sees
it), so a keeper thread powers the machine on again whenever it stopped, and
reads its console meanwhile (a full pty would stall the guest). The first
boot sets the device's confirmation window from this run's measured boot
(pace.py), so a new slot on a slow, loaded machine is not rolled back for
being slow. The update to try is a signed .swu of the next version, made from
the image (refimage.updates) and uploaded as an artifact before the view starts.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.pki import Pki, PkiError
from twelvefactor_services.process import LaunchError
from twelvefactor_services.services_stack import ephemeral_ports

from refimage import image as refimage_image
from refimage import system
from refimage.progress import BuildError
from testbed.boot.board import OVMF_CODE, OVMF_VARS
from testbed.boot.device import Device, provision_device
from testbed.boot.hub import HUB_ADDRESS, WG_PORT, Hub, connect_in_netns
from testbed.boot.pace import PACE, REFERENCE_BOOT
from testbed.boot.updating import CONFIRM_SECONDS, build_update
from testbed.boot.vm import VMError
from testbed.hostagent import HostAgent
from testbed.proc import TestbedError
from testbed.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
QEMU_DEVICE = "qemu-1"
TOOLS = (
    "ip", "nft", "wg", "wireguard-go", "mosquitto", "dnsmasq", "qemu-system-x86_64",
    "mmdebstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "grub-mkstandalone", "debugfs",
    "zstd",
)  # fmt: skip


class QemuDemoError(RuntimeError):
    """--qemu cannot run here; the message says why in one sentence."""


# what stops the demo with its message (a start-up step that failed), not a traceback
ERRORS = (LaunchError, QemuDemoError, TestbedError, VMError, BuildError, PkiError)
__all__ = ["ERRORS", "HUB_ADDRESS", "QEMU_DEVICE", "WG_PORT", "HubCloud", "QemuDevice"]


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def check_can_run(euid: int, which: Any = _which, exists: Any = Path.exists) -> None:
    """Root, the tools and the firmware --qemu needs, or a sentence that names what is missing."""
    if euid != 0:
        raise QemuDemoError(
            "--qemu needs root (it makes a network namespace, a tap and nftables rules for the"
            " hub, and runs QEMU): run it as root or with sudo"
        )
    missing = [tool for tool in TOOLS if which(tool) is None]
    missing += [str(f) for f in (OVMF_CODE, OVMF_VARS) if not exists(f)]
    if missing:
        raise QemuDemoError(
            f"--qemu needs {', '.join(missing)}, not found on this machine: run"
            " `scripts/setup qemu` (scripts/demo --qemu does) to install them"
        )


def next_version(version: str) -> str:
    """The version the demo's update carries: the image's, its last number one higher."""
    head, _, last = version.rpartition(".")
    if not last.isdigit():
        raise ValueError(f"the image's version {version!r} does not end in a number")
    return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)


def below_ephemeral(host: tuple[int, int], size: int = 8192) -> tuple[int, int]:
    """The hub namespace's ephemeral range: just below the host's, so that the ports its
    services pick free (below the namespace's range: services_stack.free_port) are below the
    host's too, where no outgoing connection of the host takes a port (a busy host has
    thousands), and the relay finds the API's port free on the host's loopback."""
    low = host[0]
    if low - size < 1024:
        raise QemuDemoError(
            f"the host's ephemeral ports start at {low}: no room below them for the hub's"
            f" {size} (net.ipv4.ip_local_port_range)"
        )
    return low - size, low - 1


# -- the operator API on the host's loopback ------------------------------------------


class Relay:
    """127.0.0.1:port on the host, each connection carried to 127.0.0.1:port in `netns`."""

    def __init__(self, netns: str, port: int) -> None:
        self.netns = netns
        self.port = port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", port))
        except OSError as exc:
            self._listener.close()
            raise QemuDemoError(
                f"port {port} on the host's loopback is taken ({exc.strerror}): the console is"
                " relayed at the port the management service took in the hub's namespace"
            ) from None
        self._listener.listen(16)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                outside, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._carry, args=(outside,), daemon=True).start()

    def _carry(self, outside: socket.socket) -> None:
        try:
            inside = connect_in_netns(self.netns, "127.0.0.1", self.port, timeout=10)
        except OSError:
            outside.close()
            return
        with self._lock:
            if self._closed:
                outside.close()
                inside.close()
                return
            self._open |= {outside, inside}
        back = threading.Thread(target=self._pump, args=(inside, outside), daemon=True)
        back.start()
        self._pump(outside, inside)
        back.join()
        with self._lock:
            self._open -= {outside, inside}
        outside.close()
        inside.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()


# -- host agents on the hub's broker ------------------------------------------------------


@dataclass(frozen=True)
class HubSide:
    """What a host agent's configuration needs (agent_config reads these three of a Stack):
    a certificate from the hub's device CA and the broker at the hub's tunnel address."""

    pki_dir: Path
    management_port: int
    solution_port: int

    def device(self, device_id: str) -> Identity:
        pki = Pki(self.pki_dir)
        paths = pki.device_paths(device_id)
        if not paths.cert.exists():
            paths = pki.device(device_id)
        return Identity(paths.cert, paths.key, paths.ca)

    @property
    def management_endpoint(self) -> Endpoint:
        return Endpoint(HUB_ADDRESS, self.management_port)

    @property
    def solution_endpoint(self) -> Endpoint:
        return Endpoint(HUB_ADDRESS, self.solution_port)


class NetnsAgent(HostAgent):
    """A host agent whose process runs inside the hub's namespace."""

    def __init__(self, side: HubSide, netns: str, device_id: str, root: Path) -> None:
        # HostAgent reads only device() and the two endpoints of its stack (agent_config)
        super().__init__(cast(Stack, side), device_id, root)
        self.netns = netns

    def start(self, timeout: float = 60.0) -> None:
        argv = ["ip", "netns", "exec", self.netns, self.python, "-m", "twelvefactor_agent.cli"]
        self._spawn([*argv, "run", "--config", str(self.config_file)], self._answers, timeout)


# -- the cloud: the shipped hub, its API relayed to the host ---------------------------------


class HubCloud:
    """The shipped hub in its namespace as the demo's cloud, its operator API on the host."""

    def __init__(self, root: Path) -> None:
        self.hub = Hub(root, local_ports=below_ephemeral(ephemeral_ports()))
        self.relay: Relay | None = None

    def start(self, tries: int = 3) -> None:
        """The hub, and the relay at its API's port; a port taken on the host (the hub's
        service picks a free one in its namespace) is a new start, with a new port."""
        for attempt in range(1, tries + 1):
            self.hub.start()
            try:
                self.relay = Relay(self.hub.netns, self.port)
                return
            except QemuDemoError:
                if attempt == tries:
                    raise
                print(f"port {self.port} is taken on the host: starting the hub again", flush=True)
                self.hub.stop()
                (self.hub.root / "hub.json").unlink()  # start_hub waits for a new one

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.hub.stop()

    @property
    def port(self) -> int:
        return int(self.hub.info["management_api_port"])

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.hub.pki_dir / "ca.crt"

    @property
    def token_file(self) -> Path:
        return Path(self.hub.info["admin_token_file"])

    @property
    def registry(self) -> str:
        """The management database: a SQLite file's path or a PostgreSQL URL."""
        return str(self.hub.info["registry"])

    @property
    def archive_dir(self) -> Path:
        return self.hub.archive_dir

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.hub.management_send(method, path, body)

    def agent(self, device_id: str, root: Path) -> NetnsAgent:
        side = HubSide(
            self.hub.pki_dir,
            int(self.hub.info["management_port"]),
            int(self.hub.info["solution_port"]),
        )
        return NetnsAgent(side, self.hub.netns, device_id, root)


# -- the QEMU device ------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """The update the demo offers: the artifact as the management service stored it."""

    swu: Path
    sha256: str
    version: str


def reference_image() -> Path:
    """The reference image's disk, built once and then taken from build/refimage."""
    return refimage_image.build(ROOT / "build" / "refimage").disk


def prepare_update(image: Path, cloud: HubCloud) -> Update:
    """A signed .swu of the next version for the image's hardware, uploaded as an artifact."""
    version = next_version(system.distro_variables()["DISTRO_VERSION"])
    swu = build_update(image, "good", version)
    artifact = cloud.hub.add_artifact(swu)
    return Update(swu, str(artifact["sha256"]), str(artifact["version"]))


class QemuDevice:
    """The reference image in QEMU, kept powered on: a reboot is QEMU exiting, started again."""

    def __init__(self, cloud: HubCloud, image: Path, work: Path, events: queue.SimpleQueue[str]):
        accel = os.environ.get("TWELVEFACTOR_QEMU_ACCEL", "tcg")
        self.device: Device = provision_device(image, cloud.hub, work, QEMU_DEVICE, accel)
        self.events = events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="qemu", daemon=True)
        self._window_set = False
        self.powered_on_at: float | None = None  # monotonic, of the running boot

    @property
    def boots(self) -> int:
        return self.device.vm.boots

    def overdue(self, powered_for: float) -> bool:
        """Whether this boot has taken longer than a boot's limit at this run's pace."""
        return powered_for > PACE.limit(REFERENCE_BOOT)

    @property
    def console_log(self) -> Path:
        return self.device.vm.console_log

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.device.vm.power_cut()
        self.powered_on_at = None

    def _keep(self) -> None:
        vm = self.device.vm
        while not self._stop.is_set():
            try:
                if not vm.running:
                    if vm.boots:
                        self.events.put(
                            f"{QEMU_DEVICE} QEMU exited (a reboot or a power cut): powering it on"
                        )
                    self.device.power_on()
                    self.powered_on_at = time.monotonic()
                    self.events.put(f"{QEMU_DEVICE} powered on (boot {vm.boots}): booting")
                    if not self._window_set:
                        self._first_boot()
                elif not vm.drain():
                    self.powered_on_at = None
            except (VMError, OSError) as exc:
                self.events.put(f"{QEMU_DEVICE} console: {str(exc).splitlines()[0]}")
                if self._stop.wait(5):
                    return

    def _first_boot(self) -> None:
        """Log in on the console, wait for the device online (its time sets the pace), then set
        its confirmation window in proportion (a setting on /data, kept across boots)."""
        vm = self.device.vm
        vm.login()
        seconds = self.device.wait_online("the demo's first boot")
        window = round(PACE.limit(CONFIRM_SECONDS))
        vm.check(f"echo TWELVEFACTOR_CONFIRM_WINDOW={window} > /data/config/confirm.env && sync")
        self._window_set = True
        self.events.put(
            f"{QEMU_DEVICE} online {seconds:.0f} s after power-on; confirmation window {window} s"
        )
