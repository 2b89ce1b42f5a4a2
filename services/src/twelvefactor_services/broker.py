"""The reference broker: one mosquitto process with its own certificate, key and CA certificates.

The broker is given its server certificate and key and the two CA
certificates (device CA, service CA) as files, normally its credentials
folder from ``twelvefactor-pki export PKI broker DIR``; never the PKI
directory, which holds the CA keys (docs/pki.md).

Three TLS listeners, each with its own ACL file (``per_listener_settings``):

- *management* (devices' management session) and *solution* (devices'
  solution session): trust only the device CA; pattern ACLs tie ``%u`` (the
  certificate CN) to the device's own topics;
- *service*: trusts only the service CA; user sections for ``management``
  and ``solution``. A device certificate cannot connect here, a service
  certificate cannot connect as a device.

mosquitto 2.0.11 never checks SUBSCRIBE filters against an ``acl_file`` (its
default ACL check returns success for every subscription); it checks READ
rights on each message's real topic when delivering it, retained messages
included. A device may thus subscribe to anything and receive only its own
topics; the services' shared groups are protected by a secret group name
(see ``topics``). A listener ``mount_point`` would have kept devices out of
them too, but 2.0.11 does not strip it from outgoing messages (fixed in
2.0.12). Persistence lives in the run directory, so sessions and retained
messages survive a restart on the same ports.

Every listener loads the identity plugin (``services/broker-plugin``): it
binds each client id to the certificate presenting it (a device only
``<CN>-mgmt`` on the management listener and ``<CN>-sol`` on the solution
listener, a service only ``<CN>-<number>``) and sets the username to the CN.
``use_identity_as_username`` would set the username too, but mosquitto then
skips every authentication check, so a device could take over any client id,
a service's included, and wipe its session.

Revocation: the device listeners check the device CA's CRL (``crl.pem`` in
the broker's folder) twice, both read at start and again on SIGHUP
(``Broker.reload``; the hub sends it when the file changes). mosquitto's
``crlfile`` refuses a revoked certificate in the TLS handshake (measured on
Debian's 2.0.11: the file is read again on SIGHUP), but never drops a client
that is already connected; the identity plugin refuses it at CONNECT and, on
the reload, disconnects the connected devices the CRL now lists, so a
decommissioned device is off the broker at once (docs/enrolment.md).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twelvefactor_agent.protocol.envelope import MAX_MESSAGE

from twelvefactor_services.pki import Credentials
from twelvefactor_services.process import ChildProcess, LaunchError


class BrokerError(LaunchError):
    """The broker could not be started or did not become ready."""


def find_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if path is None:
        raise BrokerError(
            "mosquitto not found (looked on PATH and in /usr/sbin): "
            "install the Debian package 'mosquitto' (scripts/setup does)"
        )
    return path


PLUGIN_NAME = "twelvefactor_identity.so"
# Where an installed hub keeps the plugin, then where `make -C services/broker-plugin`
# leaves it in a checkout (this file is services/src/twelvefactor_services/broker.py).
PLUGIN_PATHS = (
    Path("/usr/lib/twelvefactor") / PLUGIN_NAME,
    Path(__file__).resolve().parents[2] / "broker-plugin" / PLUGIN_NAME,
)


def find_identity_plugin() -> Path:
    """The identity plugin: $TWELVEFACTOR_BROKER_PLUGIN, else the first of PLUGIN_PATHS."""
    named = os.environ.get("TWELVEFACTOR_BROKER_PLUGIN")
    candidates = [Path(named)] if named else list(PLUGIN_PATHS)
    for path in candidates:
        if path.is_file():
            return path
    raise BrokerError(
        f"the broker's identity plugin is missing (looked at {', '.join(map(str, candidates))}): "
        "build it with `make -C services/broker-plugin` (scripts/setup does) or set "
        "TWELVEFACTOR_BROKER_PLUGIN"
    )


# The broker's TLS session lifetime, seconds: OpenSSL's default is 7,200 (docs/decisions.md,
# "The broker keeps TLS sessions for a day, in its own cache").
TLS_SESSION_LIFETIME = 86400
MAX_TLS_SESSION_LIFETIME = 604800  # RFC 8446: a ticket lives at most seven days


@dataclass(frozen=True)
class BrokerTls:
    """The broker's server certificate and key, and the CA certificates it checks clients with.

    ``device_ca`` signed every device's certificate (and the broker's own);
    ``service_ca`` only the services'. ``crl`` is the device CA's revocation
    list; without it (a hand-made set-up) revoked devices are not refused.
    """

    cert: Path
    key: Path
    device_ca: Path
    service_ca: Path
    crl: Path | None = None

    @classmethod
    def exported(cls, folder: Path) -> BrokerTls:
        """The files ``twelvefactor-pki export PKI broker FOLDER`` writes."""
        files = Credentials(folder, "broker")
        return cls(files.cert, files.key, files.ca, files.service_ca, files.crl)

    def check(self) -> None:
        """BrokerError naming the first missing file (by option) and the command that makes it."""
        named = (
            ("--cert", self.cert),
            ("--key", self.key),
            ("--device-ca", self.device_ca),
            ("--service-ca", self.service_ca),
            *([("--crl", self.crl)] if self.crl is not None else []),
        )
        for option, path in named:
            if not path.is_file():
                raise BrokerError(
                    f"missing {option} {path}: make the broker's files with "
                    "'twelvefactor-pki export PKI broker DIR' (docs/pki.md)"
                )


@dataclass(frozen=True)
class BrokerConfig:
    tls: BrokerTls
    run_dir: Path
    management_port: int
    solution_port: int
    service_port: int
    address: str = "127.0.0.1"
    service_address: str = "127.0.0.1"
    identity_plugin: Path | None = None  # None: find_identity_plugin()
    # How long a client's TLS session may be resumed (the plugin's tls_sessions.c): a
    # day, so that a metered device checking in every 4 h sends no certificate.
    tls_session_lifetime: int = TLS_SESSION_LIFETIME
    # A further client id suffix a device may use on both device listeners, for a
    # test's observer of what the broker carries to a device. The hub never sets it.
    observer_suffix: str | None = None

    @property
    def config_file(self) -> Path:
        return self.run_dir / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "mosquitto.log"


# Devices write exactly the topics of docs/protocol.md, nothing under them: with `up/#`
# a device filled the broker's memory and persistence with retained junk topics.
MANAGEMENT_ACL = """\
# Devices on the management listener: their own topics only (%u = certificate CN).
pattern write mgmt/%u/up/online
pattern write mgmt/%u/up/meta
pattern write mgmt/%u/up/health
pattern write mgmt/%u/up/config
pattern write mgmt/%u/up/update
pattern read mgmt/%u/down/#
"""

SOLUTION_ACL = """\
# Devices on the solution listener: their own topics only (%u = certificate CN).
pattern write sol/%u/up/data/+
pattern write sol/%u/up/proxy
pattern read sol/%u/down/#
"""

# The largest packet the broker takes: the protocol's largest message (1 MiB, a data
# envelope or a proxied call) plus room for the topic and properties.
MAX_PACKET = MAX_MESSAGE + 16 * 1024

SERVICE_ACL = """\
# Services: each reads what devices send it and writes what it sends devices.
user management
topic read mgmt/+/up/#
topic write mgmt/+/down/#

user solution
topic read sol/+/up/#
topic write sol/+/down/#
"""


def _check_port(name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise BrokerError(f"{name} port {port} is out of range 1-65535")


def render_config(cfg: BrokerConfig) -> dict[str, str]:
    """The files to write into the run directory: mosquitto.conf and the ACL files."""
    ports = {
        "management": cfg.management_port,
        "solution": cfg.solution_port,
        "service": cfg.service_port,
    }
    for name, port in ports.items():
        _check_port(name, port)
    if not 1 <= cfg.tls_session_lifetime <= MAX_TLS_SESSION_LIFETIME:
        raise BrokerError(
            f"tls_session_lifetime {cfg.tls_session_lifetime} s is out of range "
            f"1-{MAX_TLS_SESSION_LIFETIME} (RFC 8446 bounds a ticket's lifetime)"
        )
    if len(set(ports.values())) != 3:
        raise BrokerError(f"the three listener ports must differ, got {ports}")
    tls = cfg.tls
    tls.check()
    run = cfg.run_dir.resolve()
    user = pwd.getpwuid(os.geteuid()).pw_name
    plugin = (cfg.identity_plugin or find_identity_plugin()).resolve()

    def listener(port: int, address: str, cafile: Path, acl: str, suffix: str | None) -> str:
        suffixes = [s for s in (suffix, cfg.observer_suffix) if s] if suffix else []
        lines = [
            f"listener {port} {address}",
            "protocol mqtt",
            "require_certificate true",
            "tls_version tlsv1.2",
            f"cafile {cafile.resolve()}",
            f"certfile {tls.cert.resolve()}",
            f"keyfile {tls.key.resolve()}",
            "allow_anonymous false",
            f"acl_file {run / acl}",
            f"plugin {plugin}",
            f"plugin_opt_device_ca {tls.device_ca.resolve()}",
            f"plugin_opt_service_ca {tls.service_ca.resolve()}",
            f"plugin_opt_tls_session_lifetime {cfg.tls_session_lifetime}",
        ]
        if suffixes:
            lines.append(f"plugin_opt_device_suffixes {','.join(suffixes)}")
        if suffix and tls.crl is not None:  # device listeners: both checks of the CRL
            lines.insert(5, f"crlfile {tls.crl.resolve()}")
            lines.append(f"plugin_opt_crl {tls.crl.resolve()}")
        return "\n".join(lines) + "\n"

    conf = "\n".join(
        [
            "# Generated by twelvefactor_services.broker: edit the generator, not this file.",
            "per_listener_settings true",
            # Run as whoever started us: keys stay private to that user.
            f"user {user}",
            "persistence true",
            f"persistence_location {run}/",
            "persistence_file mosquitto.db",
            "autosave_interval 30",
            # stderr: ServicesStack sends it to run_dir/mosquitto.log, the CLI to the terminal.
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Queued QoS 1 messages per offline persistent session (the solution service's).
            "max_queued_messages 100000",
            # A bigger packet is refused and its client disconnected (was: 100 MiB taken).
            f"max_packet_size {MAX_PACKET}",
            "set_tcp_nodelay true",
            "",
            listener(cfg.management_port, cfg.address, tls.device_ca, "acl-management", "-mgmt"),
            listener(cfg.solution_port, cfg.address, tls.device_ca, "acl-solution", "-sol"),
            listener(cfg.service_port, cfg.service_address, tls.service_ca, "acl-service", None),
        ]
    )
    return {
        "mosquitto.conf": conf,
        "acl-management": MANAGEMENT_ACL,
        "acl-solution": SOLUTION_ACL,
        "acl-service": SERVICE_ACL,
    }


def write_config(cfg: BrokerConfig) -> Path:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_config(cfg).items():
        (cfg.run_dir / name).write_text(text)
    return cfg.config_file


def _probe_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else ("::1" if address == "::" else address)


def tls_listening(host: str, port: int, ca: Path, timeout: float = 2.0) -> bool:
    """True once the port completes (or a server-side alert ends) a TLS handshake.

    The probe carries no client certificate: it only proves the listener speaks
    TLS with a server certificate from our CA. A certificate verification
    failure is a configuration error, raised at once.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            tls.version()
    except ssl.SSLCertVerificationError as exc:
        raise BrokerError(
            f"broker on {host}:{port} presents an untrusted certificate: {exc}"
        ) from exc
    except ssl.SSLError:
        return True  # the server spoke TLS and refused the certificate-less probe
    except OSError:
        return False
    return True


class Broker(ChildProcess):
    """mosquitto as a child process with a generated configuration."""

    def __init__(self, cfg: BrokerConfig) -> None:
        super().__init__("mosquitto", cfg.log_file)
        self.cfg = cfg

    def start(self, timeout: float = 30.0) -> None:
        mosquitto = find_mosquitto()
        conf = write_config(self.cfg)
        pending = {
            (_probe_host(self.cfg.address), self.cfg.management_port),
            (_probe_host(self.cfg.address), self.cfg.solution_port),
            (_probe_host(self.cfg.service_address), self.cfg.service_port),
        }

        def all_listening() -> bool:
            for host, port in list(pending):
                # every listener presents the broker's one certificate, from the device CA
                if tls_listening(host, port, self.cfg.tls.device_ca):
                    pending.discard((host, port))
            return not pending

        try:
            self._spawn([mosquitto, "-c", str(conf)], all_listening, timeout)
        except LaunchError as exc:
            ports = sorted(p for _, p in pending)
            raise BrokerError(f"mosquitto (ports not open: {ports}): {exc}") from exc

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (mosquitto saves its persistence file on the way out), then SIGKILL."""
        super().stop(timeout)

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its configuration again, ``crlfile`` with it, and the
        identity plugin reads the CRL and disconnects the devices it now lists."""
        pid = self.pid
        if pid is None or not self.running:
            raise BrokerError("the broker is not running")
        os.kill(pid, signal.SIGHUP)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twelvefactor-broker",
        description="Run mosquitto in the foreground with the twelvefactor listeners and ACLs.",
    )
    parser.add_argument(
        "--cert", type=Path, required=True, metavar="FILE", help="the broker's server certificate"
    )
    parser.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="the broker's private key"
    )
    parser.add_argument(
        "--device-ca",
        type=Path,
        required=True,
        metavar="FILE",
        help="CA certificate of the devices (device listeners)",
    )
    parser.add_argument(
        "--service-ca",
        type=Path,
        required=True,
        metavar="FILE",
        help="CA certificate of the services (service listener)",
    )
    parser.add_argument(
        "--crl",
        type=Path,
        metavar="FILE",
        help="the device CA's revocation list (PEM): revoked devices are refused; "
        "after a change, SIGHUP the broker: it reads the file again and disconnects them",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="config, ACLs, persistence")
    parser.add_argument("--management-port", type=int, required=True)
    parser.add_argument("--solution-port", type=int, required=True)
    parser.add_argument("--service-port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1", help="device listeners bind here")
    parser.add_argument("--service-address", default="127.0.0.1")
    args = parser.parse_args(argv)
    cfg = BrokerConfig(
        tls=BrokerTls(args.cert, args.key, args.device_ca, args.service_ca, args.crl),
        run_dir=args.run_dir,
        management_port=args.management_port,
        solution_port=args.solution_port,
        service_port=args.service_port,
        address=args.address,
        service_address=args.service_address,
    )
    try:
        mosquitto = find_mosquitto()
        conf = write_config(cfg)
    except BrokerError as exc:
        print(f"twelvefactor-broker: {exc}", file=sys.stderr)
        return 2
    print(f"twelvefactor-broker: running mosquitto -c {conf}", file=sys.stderr)
    os.execv(mosquitto, [mosquitto, "-c", str(conf)])


if __name__ == "__main__":
    sys.exit(main())
