"""Run the hub: WireGuard (wireguard-go), its nftables table, broker, services, NTP.

Meant to run as root in the hub's own network namespace (tests, the demo) or
on a hub host. The cloud side listens on the hub's tunnel address only, so a
device reaches it through the tunnel or not at all. Layout under the hub's
root folder:

  hub/settings.json   tunnel networks, ports (`init`)
  hub/wg.key          the hub's WireGuard private key (0600), hub/wg.pub
  hub/wg.conf         the peers as last applied (0600, holds the private key)
  hub/hub.nft         the hub's table as last loaded
  hub.json            what runs where, written once everything is up
  pki/                the PKI (`init` makes it): this process and the operator use it,
                      the broker and the services are never given it
  broker/, management/, solution/   the broker and the services (services_stack.py),
                      each with its own credentials copied into tls/ (docs/pki.md)

The device CA's CRL (pki/crl.pem, which `decommission` writes) is compared
with the broker's copy every second too: a new one is copied to the broker,
which is sent SIGHUP, reads it and disconnects the devices it lists
(broker.py). It is signed again a month before it would expire, because the
broker's TLS check refuses every device once its CRL has expired.

Peers come from the registry's `tunnel_peers` table and are re-read every
second: adding a device takes effect without a restart (`wg syncconf` keeps
the sessions of the others). A peer that has gone quiet is removed and added
again, so WireGuard forgets the handshake time stamp that would lock out a
device whose clock went back (hub/stale.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509

from twelvefactor_services.broker import BrokerError
from twelvefactor_services.hub.liveness import DEFAULT_AFTER as LIVENESS_AFTER
from twelvefactor_services.hub.liveness import LivenessTracker
from twelvefactor_services.hub.peers import PeerStore
from twelvefactor_services.hub.plan import (
    NTP_PORT,
    TABLE,
    Peer,
    PlanError,
    ServicePorts,
    Tunnel,
    check_peers,
    nft_ruleset,
    wg_config,
)
from twelvefactor_services.hub.stale import DEFAULT_AFTER, StaleTracker, parse_dump
from twelvefactor_services.management import store
from twelvefactor_services.management.store import Db
from twelvefactor_services.ntp import SntpServer
from twelvefactor_services.pki import PkiError
from twelvefactor_services.process import CommandError, run, stop
from twelvefactor_services.services_stack import ServicesStack, make_pki

MIN_STALE_AFTER = 30.0
CRL_RESIGN_DAYS = 30  # the CRL is signed again this long before its nextUpdate


class HubError(RuntimeError):
    """A step of starting the hub failed; the message names the command."""


@dataclass(frozen=True)
class Settings:
    tunnel_v4: str
    tunnel_v6: str | None
    listen_port: int
    management_mqtt: int
    solution_mqtt: int
    management_https: int
    # seconds without an authenticated packet before a peer is forgotten (stale.py)
    stale_after: float = DEFAULT_AFTER
    # the management database (a postgresql:// URL); None: the SQLite file of the layout
    registry: str | None = None
    # this hub's name when the fleet has several (hub shards, docs/scale.md); None: one
    shard: str | None = None

    @property
    def tunnel(self) -> Tunnel:
        return Tunnel.parse(self.tunnel_v4, self.tunnel_v6)

    @property
    def ports(self) -> ServicePorts:
        return ServicePorts(self.management_mqtt, self.solution_mqtt, self.management_https)


def settings_file(root: Path) -> Path:
    return root / "hub" / "settings.json"


def registry_target(root: Path) -> str:
    """The management database, which holds the peers too: the settings' `registry` URL,
    or the SQLite file of ServicesStack's layout."""
    try:
        registry = json.loads(settings_file(root).read_text()).get("registry")
    except FileNotFoundError:
        registry = None
    return str(registry or root / "management" / "registry.db")


def load_settings(root: Path) -> Settings:
    path = settings_file(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HubError(f"{path} does not exist: run `twelvefactor-hub init` first") from None
    settings = Settings(**data)
    settings.tunnel  # noqa: B018 - validates
    check_stale_after(settings.stale_after)
    return settings


def check_stale_after(seconds: float) -> None:
    if not MIN_STALE_AFTER <= seconds <= 86400:
        raise HubError(
            f"stale_after: {seconds} s is not in [{MIN_STALE_AFTER}, 86400]: a device that is up "
            "sends at least every 25 s (its persistent keepalive), and a shorter time would "
            "cut its sessions"
        )


def public_key(root: Path) -> str:
    return (root / "hub" / "wg.pub").read_text().strip()


def init(root: Path, settings: Settings) -> str:
    """Settings, the hub's WireGuard key pair and the PKI; returns the public key.
    The broker's certificate names the hub's tunnel addresses (what devices dial)."""
    tunnel = settings.tunnel
    check_stale_after(settings.stale_after)
    (root / "hub").mkdir(parents=True, exist_ok=True)
    settings_file(root).write_text(json.dumps(dataclasses.asdict(settings), indent=1) + "\n")
    key = root / "hub" / "wg.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(run("wg", "genkey"))
    pub = run("wg", "pubkey", input_text=key.read_text()).strip()
    (root / "hub" / "wg.pub").write_text(pub + "\n")
    pki_dir = root / "pki"
    if not (pki_dir / "ca.crt").exists():
        ips = [str(tunnel.hub_v4)]
        if tunnel.hub_v6 is not None:
            ips.append(str(tunnel.hub_v6))
        make_pki(pki_dir, broker_ips=ips)
    return pub


class Hub:
    """The running hub in the current network namespace."""

    def __init__(self, root: Path, interface: str) -> None:
        self.root = root
        self.interface = interface
        self.settings = load_settings(root)
        self.tunnel = self.settings.tunnel
        # fixed ports for the devices' listeners: they are in every device's provisioning
        self.stack = ServicesStack(
            root,
            address=str(self.tunnel.hub_v4),
            management_port=self.settings.management_mqtt,
            solution_port=self.settings.solution_mqtt,
            management_database=self.settings.registry,
            shard=self.settings.shard,
        )
        self.db = Db(registry_target(root))
        self.peers = PeerStore(self.db, self.settings.shard)
        self._wg: subprocess.Popen[bytes] | None = None
        self._ntp: SntpServer | None = None
        self._applied: list[Peer] | None = None
        self._stale = StaleTracker(self.settings.stale_after)
        self._liveness = LivenessTracker(LIVENESS_AFTER)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        log = (self.root / "hub" / "wireguard-go.log").open("ab")
        self._wg = subprocess.Popen(
            ["wireguard-go", "-f", self.interface], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not Path(f"/sys/class/net/{self.interface}").exists():
            if self._wg.poll() is not None or time.monotonic() > deadline:
                raise HubError(f"wireguard-go did not create {self.interface}")
            time.sleep(0.05)
        self.sync_peers()
        for address in self.tunnel.hub_interfaces():
            # nodad: an IPv6 address is usable at once (bind() fails while tentative)
            extra = ["nodad"] if ":" in address else []
            run("ip", "addr", "add", address, "dev", self.interface, *extra)
        run("ip", "link", "set", self.interface, "up")
        ruleset = nft_ruleset(self.interface, self.tunnel, self.settings.ports.tcp())
        (self.root / "hub" / "hub.nft").write_text(ruleset)
        run("nft", "-f", str(self.root / "hub" / "hub.nft"))
        ntp = [(str(self.tunnel.hub_v4), NTP_PORT)]
        if self.tunnel.hub_v6 is not None:
            ntp.append((str(self.tunnel.hub_v6), NTP_PORT))
        self._ntp = SntpServer(ntp).start()
        self.stack.start_broker()
        management = self.stack.management(artifact_port=self.settings.management_https)
        management.start()
        self.stack.solution().start()
        info: dict[str, Any] = {
            "interface": self.interface,
            "public_key": public_key(self.root),
            "listen_port": self.settings.listen_port,
            "address_v4": str(self.tunnel.hub_v4),
            "address_v6": None if self.tunnel.hub_v6 is None else str(self.tunnel.hub_v6),
            "management_port": self.settings.management_mqtt,
            "solution_port": self.settings.solution_mqtt,
            "management_https_port": self.settings.management_https,
            "management_api_port": management.api_port,
            "admin_token_file": str(self.stack.admin_token_file),
            "service_port": self.stack.broker.cfg.service_port,
            "registry": registry_target(self.root),
            "shard": self.settings.shard,
            "archive_dir": str(self.stack.archive_dir),
            "pki_dir": str(self.stack.pki.root),
            "wireguard_go_pid": self._wg.pid,
        }
        tmp = self.root / "hub.json.tmp"
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        tmp.rename(self.root / "hub.json")

    def sync_peers(self) -> bool:
        """Apply the registry's peers if they changed; True if it did."""
        peers = self.peers.peers()
        if peers == self._applied:
            return False
        check_peers(self.tunnel, peers)
        conf = self.root / "hub" / "wg.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        private = (self.root / "hub" / "wg.key").read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(wg_config(private, self.settings.listen_port, peers))
        run("wg", "syncconf", self.interface, str(conf))
        self._applied = peers
        return True

    def sync_crl(self) -> bool:
        """Give the broker the PKI's CRL if it changed, and make it read it; True if so."""
        pki = self.stack.pki
        if pki.crl.exists():
            crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
            if crl.next_update_utc is None or crl.next_update_utc - dt.datetime.now(
                dt.UTC
            ) < dt.timedelta(days=CRL_RESIGN_DAYS):
                pki.write_crl()
        copy = self.stack.credentials["broker"].crl
        if pki.crl.exists() and copy.exists() and pki.crl.read_bytes() == copy.read_bytes():
            return False
        pki.install_crl(copy.parent)
        self.stack.broker.reload()
        print("twelvefactor-hub: the broker was given the new CRL", flush=True)
        return True

    def watch_peers(self, now: float) -> None:
        """Each peer's received bytes: liveness for management, and who to forget."""
        rx = parse_dump(run("wg", "show", self.interface, "dump"))
        names = {p.public_key: p.device for p in self._applied or []}
        self.report_liveness(rx, names, now)
        self.forget_quiet_peers(rx, names, now)

    def report_liveness(self, rx: dict[str, int], names: dict[str, str], now: float) -> None:
        wall = time.time()
        for change in self._liveness.observe(rx, now):
            device = names.get(change.key)
            if device is None:
                continue
            try:
                self.peers.record_liveness(device, change.alive, wall - (now - change.last_rx))
            except store.Error as exc:  # told again next round: the registry is busy
                self._liveness.undecide(change.key)
                print(f"twelvefactor-hub: {device}: tunnel state not recorded: {exc}", flush=True)
                continue
            state = "back" if change.alive else f"quiet for {now - change.last_rx:.0f} s"
            print(f"twelvefactor-hub: {device}: tunnel {state}", flush=True)

    def forget_quiet_peers(
        self, rx: dict[str, int], names: dict[str, str], now: float
    ) -> list[str]:
        """Remove and re-add the peers that went quiet; their device ids."""
        forgotten = []
        for key in self._stale.observe(rx, now):
            run("wg", "set", self.interface, "peer", key, "remove")
            forgotten.append(names.get(key, key))
        if forgotten:
            self._applied = None  # the next sync adds them again, with no stamp
            self.sync_peers()
            print(
                f"twelvefactor-hub: forgot the handshake state of {', '.join(forgotten)}: "
                f"nothing received for {self._stale.after:.0f} s",
                flush=True,
            )
        return forgotten

    def serve(self, stopping: threading.Event) -> None:
        while not stopping.wait(1.0):
            try:
                self.sync_peers()
                self.watch_peers(time.monotonic())
            # store.Error: sync_peers reads the registry, which another process may hold
            except (PlanError, HubError, CommandError, ValueError, store.Error) as exc:
                print(f"twelvefactor-hub: peers not applied: {exc}", flush=True)
            try:
                self.sync_crl()
            except (OSError, ValueError, BrokerError, PkiError) as exc:
                print(f"twelvefactor-hub: CRL not applied: {exc}", flush=True)

    def stop(self) -> None:
        self.stack.stop()
        if self._ntp is not None:
            self._ntp.stop()
            self._ntp = None
        run("nft", "delete", "table", "inet", TABLE, check=False)
        stop(self._wg, timeout=10)
        self._wg = None
        self.db.close()


def serve_forever(root: Path, interface: str) -> int:
    hub = Hub(root, interface)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    hub.start()
    print(f"twelvefactor-hub: up on {interface}", flush=True)
    try:
        hub.serve(stopping)
    finally:
        hub.stop()
    return 0
