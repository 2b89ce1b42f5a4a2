"""The broker and the management and solution services, started as child processes in one folder.

The hub (`twelvefactor-hub serve`) stands its cloud side up with this, so it is
product code; the test bed's Stack (testbed/stack.py) builds on it with what
only tests need (device identities, endpoints, HTTP helpers).

Directory layout under ``root``: ``pki/`` (made beforehand: ``make_pki``),
``broker/`` (config, ACLs, persistence, log), ``management/`` (registry.db,
artifacts/, log), ``solution/`` (solution.db, archive/, log), and in each of
the last three ``tls/``: that process's credentials, copied from the PKI.

The stack signs nothing but the artifact server's certificate when it is
missing; the processes it starts are never given ``pki/``, only the files in
their own ``tls/`` folder (docs/pki.md).
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from twelvefactor_services.broker import Broker, BrokerConfig, BrokerTls
from twelvefactor_services.management import operators
from twelvefactor_services.management.api_client import ManagementClient
from twelvefactor_services.management.store import Db
from twelvefactor_services.pki import (
    API_SERVER,
    ARTIFACT_SERVER,
    PROCESSES,
    Credentials,
    Pki,
    PkiError,
)
from twelvefactor_services.process import ChildProcess

LOCALHOST = "127.0.0.1"
ADMIN = "admin"  # the operator the stack bootstraps; its token is in management/admin.token

_handed_out: set[int] = set()
_pick = random.Random()  # its own: a test that seeds the module's generator changes nothing here
PICK_BELOW = 16384  # how many ports under the ephemeral range free_port picks from


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (outgoing connections, bind to port 0)."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, never one this process handed out before.

    Picked at random below the kernel's ephemeral range: a port handed out is bound
    only later (a service's start takes seconds on a loaded machine), and inside that
    range any outgoing connection of any process may take it first as its source port
    (CI, 5 December: a management service's API port, "Address already in use"). Below
    it only another picker can, as unlikely as two equal draws from 16,384. Each port
    is remembered and a repeat is refused; the bind (without SO_REUSEADDR) checks that
    nothing holds it, not even a closed connection in TIME_WAIT.
    """
    low = ephemeral_ports()[0]
    first = max(1024, low - PICK_BELOW)
    while True:
        # a range squeezed below 1024 leaves only the kernel's pick
        wanted = _pick.randrange(first, low) if low - first >= 1024 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOCALHOST, wanted))
            except OSError:
                continue  # taken: draw again
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def make_pki(root: Path, broker_ips: Iterable[str] = ()) -> Pki:
    """A new PKI with the broker's server certificate and both service certificates.

    The broker's certificate names loopback and ``broker_ips`` (the hub's tunnel
    addresses: what devices dial).
    """
    pki = Pki(root)
    pki.init()
    pki.server("broker", dns=["localhost"], ips=[LOCALHOST, "::1", *broker_ips])
    for name in ("management", "solution"):
        pki.service(name)
    return pki


class ServiceProcess(ChildProcess):
    """A service run as ``python -m <module> serve ...``, ready once it writes its ready file.

    The services write the ready file after their shared subscription is
    granted, so a client may publish as soon as ``start()`` returns.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        run_dir: Path,
        api: ManagementClient | None = None,
        artifact_port: int | None = None,
    ) -> None:
        super().__init__(name, run_dir / f"{name}.log")
        self.api = api  # the operator API as the stack's admin (management copies)
        self.api_port = None if api is None else api.port
        self.artifact_port = artifact_port
        self.argv = list(argv)
        self.run_dir = run_dir
        self.ready_file = run_dir / f"{name}.ready"

    def start(self, timeout: float = 60.0) -> None:
        self.ready_file.unlink(missing_ok=True)
        argv = [*self.argv, "--ready-file", str(self.ready_file)]
        self._spawn(argv, self.ready_file.exists, timeout)


class ServicesStack:
    """Broker and service copies in ``root``, over the PKI in ``root/pki``.

    At construction each process's credentials are copied from the PKI into its
    ``tls/`` folder (``install_credentials``); each process is started with
    those files only. The devices' listeners (management, solution) and the
    artifact server bind ``address``; the services reach the broker on its
    loopback service listener. A port not given is picked free.
    """

    def __init__(
        self,
        root: Path,
        *,
        address: str = LOCALHOST,
        management_port: int | None = None,
        solution_port: int | None = None,
        observer_suffix: str | None = None,
        solution_database: str | None = None,
        management_database: str | None = None,
        shard: str | None = None,
    ) -> None:
        """`solution_database`, `management_database`: where the copies keep their state
        (a SQLite file's path or a postgresql:// URL; default solution/solution.db and
        management/registry.db); `shard`: the hub shard this stack's broker is."""
        self.root = root
        self.solution_database = solution_database
        self.management_database = management_database
        self.shard = shard  # the hub shard this stack's broker is (None: a fleet of one)
        root.mkdir(parents=True, exist_ok=True)
        pki_dir = root / "pki"
        if not (pki_dir / "ca.crt").exists():
            raise PkiError(f"{pki_dir} holds no PKI (make_pki makes one)")
        self.pki = Pki(pki_dir)
        # The artifact server (HTTPS, mutual TLS) listens where devices reach the broker.
        self.address = address
        if not self.pki.server_paths(ARTIFACT_SERVER).cert.exists():
            self.pki.server(ARTIFACT_SERVER, dns=["localhost"], ips=sorted({LOCALHOST, address}))
        if not self.pki.server_paths(API_SERVER).cert.exists():
            self.pki.server(API_SERVER, dns=["localhost"], ips=[LOCALHOST])
        self.credentials = {p: Credentials(root / p / "tls", p) for p in PROCESSES}
        self.install_credentials()
        self.broker = Broker(
            BrokerConfig(
                tls=BrokerTls.exported(self.credentials["broker"].folder),
                run_dir=root / "broker",
                management_port=free_port() if management_port is None else management_port,
                solution_port=free_port() if solution_port is None else solution_port,
                service_port=free_port(),
                address=address,
                observer_suffix=observer_suffix,
            )
        )
        self.services: list[ServiceProcess] = []
        self._copies = {"management": 0, "solution": 0}
        self.artifact_port = free_port()

    def install_credentials(self) -> None:
        """Copy each process's files from the PKI into its ``tls/`` folder (again: renewals)."""
        for process, creds in self.credentials.items():
            self.pki.export(process, creds.folder)

    @property
    def admin_token_file(self) -> Path:
        return self.root / "management" / "admin.token"

    def admin_token(self) -> str:
        """The bootstrap admin's token, made with the first admin on first use (another
        shard's stack on the same database may have made the admin already)."""
        path = self.admin_token_file
        if not path.exists():
            db = Db(self.registry_db)
            try:
                if operators.get_operator(db, ADMIN) is None:
                    operators.add_operator(db, ADMIN, "admin", None, time.time())
                made = operators.create_token(db, ADMIN, "services stack", time.time())
            finally:
                db.close()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(made["token"] + "\n")
        return path.read_text().strip()

    def start_broker(self) -> Broker:
        self.broker.start()
        return self.broker

    def _next_copy(self, name: str) -> int:
        self._copies[name] += 1
        return self._copies[name]

    def management(
        self,
        *,
        api_port: int | None = None,
        artifact_port: int | None = None,
        signing_cert: Path | None = None,
        overdue_after: float | None = None,
        job_quiet_after: float | None = None,
        consume: bool = True,
    ) -> ServiceProcess:
        """A management service copy (not started); copies share one database, one .swu
        store and one artifact address (``self.artifact_port``, which they all bind:
        artifact_server.py), unless ``artifact_port`` says otherwise. ``consume=False``:
        an API copy, which takes none of the devices' messages.
        """
        n = self._next_copy("management")
        run = self.root / "management"
        port = api_port if api_port is not None else free_port()
        creds = self.credentials["management"]
        if artifact_port is None:
            artifact_port = self.artifact_port
        svc = ServiceProcess(
            f"management-{n}",
            [
                sys.executable,
                "-m",
                "twelvefactor_services.management.cli",
                "serve",
                *self._service_args("management"),
                "--db",
                self.registry_db,
                "--artifact-dir",
                str(self.artifact_dir),
                "--instance",
                str(n),
                "--api-port",
                str(port),
                "--api-cert",
                str(creds.api_cert),
                "--api-key",
                str(creds.api_key),
                "--artifact-host",
                self.address,
                "--artifact-port",
                str(artifact_port),
                *self._artifact_args(),
                *([] if signing_cert is None else ["--artifact-signing-cert", str(signing_cert)]),
                *([] if overdue_after is None else ["--overdue-after", str(overdue_after)]),
                *([] if job_quiet_after is None else ["--job-quiet-after", str(job_quiet_after)]),
                *([] if self.shard is None else ["--shard", self.shard]),
                *([] if consume else ["--no-consume"]),
            ],
            run,
            api=ManagementClient(
                f"https://{LOCALHOST}:{port}", token=self.admin_token(), ca=self.pki.ca_cert
            ),
            artifact_port=artifact_port,
        )
        self.services.append(svc)
        return svc

    def solution(
        self,
        *,
        webhook: str | None = None,
        max_backoff: float | None = None,
        max_attempts: int | None = None,
        proxy_config: Path | None = None,
    ) -> ServiceProcess:
        """A solution service copy (not started); copies share one database and archive."""
        n = self._next_copy("solution")
        run = self.root / "solution"
        argv = [
            sys.executable,
            "-m",
            "twelvefactor_services.solution.cli",
            "serve",
            *self._service_args("solution"),
            "--db",
            str(self.solution_db),
            "--archive-dir",
            str(self.archive_dir),
            "--instance",
            str(n),
        ]
        if webhook:
            argv += ["--webhook", webhook]
        if max_backoff is not None:
            argv += ["--max-backoff", str(max_backoff)]
        if max_attempts is not None:
            argv += ["--max-attempts", str(max_attempts)]
        if proxy_config is not None:
            argv += ["--proxy-config", str(proxy_config)]
        svc = ServiceProcess(f"solution-{n}", argv, run)
        self.services.append(svc)
        return svc

    def _service_args(self, name: str) -> list[str]:
        creds = self.credentials[name]
        return [
            "--cert",
            str(creds.cert),
            "--key",
            str(creds.key),
            "--ca",
            str(creds.ca),
            "--broker-host",
            LOCALHOST,
            "--broker-port",
            str(self.broker.cfg.service_port),
        ]

    def _artifact_args(self) -> list[str]:
        creds = self.credentials["management"]
        return [
            "--artifact-cert",
            str(creds.artifact_cert),
            "--artifact-key",
            str(creds.artifact_key),
            "--device-ca",
            str(creds.ca),
        ]

    @property
    def registry_db(self) -> str:
        """The management copies' database: a SQLite file's path or a PostgreSQL URL."""
        return self.management_database or str(self.root / "management" / "registry.db")

    @property
    def solution_db(self) -> str:
        """The solution copies' database: a SQLite file's path or a PostgreSQL URL."""
        return self.solution_database or str(self.root / "solution" / "solution.db")

    @property
    def artifact_dir(self) -> Path:
        return self.root / "management" / "artifacts"

    @property
    def archive_dir(self) -> Path:
        return self.root / "solution" / "archive"

    def stop(self) -> None:
        """Stop the service copies, newest first, then the broker."""
        for svc in reversed(self.services):
            svc.stop()
        self.broker.stop()
