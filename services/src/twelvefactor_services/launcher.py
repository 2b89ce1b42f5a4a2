"""Start the reference cloud side in a directory: PKI, broker, management, solution.

Plain classes used by the integration fixtures, the end-to-end tests and the
demo. Everything runs as child processes on 127.0.0.1 with ports picked free
at start; ``Stack.stop()`` ends what it started.

Directory layout under ``root``: ``pki/``, ``broker/`` (config, ACLs,
persistence, log), ``management/`` (registry.db, log), ``solution/``
(solution.db, archive/, log).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twelvefactor_services.broker import Broker, BrokerConfig
from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.pki import Pki, Validity
from twelvefactor_services.process import ChildProcess

LOCALHOST = "127.0.0.1"
ARTIFACT_CERT = "artifacts"  # the artifact server's certificate in the PKI (servers/NAME.crt)
T = TypeVar("T")


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, never one this process handed out before.

    The kernel picks it; a port handed out is often not bound yet (a stack picks
    its broker's three ports before starting it), and the kernel may offer the
    same one again, so each is remembered and a repeat is refused.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOCALHOST, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def make_pki(root: Path) -> Pki:
    """A PKI with the broker's server certificate and both service certificates."""
    pki = Pki(root)
    pki.init()
    pki.server("broker", dns=["localhost"], ips=[LOCALHOST, "::1"])
    for name in ("management", "solution"):
        pki.service(name)
    return pki


class ServiceProcess(ChildProcess):
    """A service run as ``python -m <module> serve ...``, ready once it writes its ready file.

    The services write the ready file after their shared subscription is
    granted, so a test may publish as soon as ``start()`` returns.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        run_dir: Path,
        http_port: int | None = None,
        artifact_port: int | None = None,
    ) -> None:
        super().__init__(name, run_dir / f"{name}.log")
        self.http_port = http_port
        self.artifact_port = artifact_port
        self.argv = list(argv)
        self.run_dir = run_dir
        self.ready_file = run_dir / f"{name}.ready"

    def start(self, timeout: float = 60.0) -> None:
        self.ready_file.unlink(missing_ok=True)
        argv = [*self.argv, "--ready-file", str(self.ready_file)]
        self._spawn(argv, self.ready_file.exists, timeout)


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET a JSON document from a local HTTP API: (status, decoded body)."""
    url = f"http://{LOCALHOST}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def http_send(
    port: int, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """Send a JSON body (PUT, POST, DELETE) to a local HTTP API: (status, decoded answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{LOCALHOST}:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(
    condition: Callable[[], T | None], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll until ``condition()`` returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:.0f} s")
        time.sleep(0.1)


class Stack:
    """PKI + broker + services in ``root``; start the pieces a test needs."""

    def __init__(self, root: Path, *, address: str = LOCALHOST) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        pki_dir = root / "pki"
        self.pki = Pki(pki_dir) if (pki_dir / "ca.crt").exists() else make_pki(pki_dir)
        self.broker = Broker(
            BrokerConfig(
                pki_dir=pki_dir,
                run_dir=root / "broker",
                management_port=free_port(),
                solution_port=free_port(),
                service_port=free_port(),
                address=address,
            )
        )
        self.services: list[ServiceProcess] = []
        self._copies = {"management": 0, "solution": 0}
        # The artifact server (HTTPS, mutual TLS) listens where devices reach the broker.
        self.address = address
        self.artifact_port = free_port()
        if not self.pki.server_paths(ARTIFACT_CERT).cert.exists():
            self.pki.server(ARTIFACT_CERT, dns=["localhost"], ips=sorted({LOCALHOST, address}))

    # -- endpoints and identities -------------------------------------------------

    @property
    def management_endpoint(self) -> Endpoint:
        return Endpoint(LOCALHOST, self.broker.cfg.management_port)

    @property
    def solution_endpoint(self) -> Endpoint:
        return Endpoint(LOCALHOST, self.broker.cfg.solution_port)

    @property
    def service_endpoint(self) -> Endpoint:
        return Endpoint(LOCALHOST, self.broker.cfg.service_port)

    def device(self, device_id: str, validity: Validity | None = None) -> Identity:
        """The device's certificate, created on first use."""
        paths = self.pki.device_paths(device_id)
        if not paths.cert.exists():
            paths = self.pki.device(device_id, validity)
        return Identity(paths.cert, paths.key, paths.ca)

    def service_identity(self, name: str) -> Identity:
        paths = self.pki.service_paths(name)
        return Identity(paths.cert, paths.key, paths.ca)

    # -- processes ----------------------------------------------------------------

    def start_broker(self) -> Broker:
        self.broker.start()
        return self.broker

    def _next_copy(self, name: str) -> int:
        self._copies[name] += 1
        return self._copies[name]

    def management(
        self, *, http_port: int | None = None, artifact_port: int | None = None
    ) -> ServiceProcess:
        """A management service copy (not started); copies share one registry and .swu store.

        The first copy serves artifacts on ``self.artifact_port``, later ones on a port of
        their own, unless ``artifact_port`` says otherwise.
        """
        n = self._next_copy("management")
        run = self.root / "management"
        port = http_port if http_port is not None else free_port()
        if artifact_port is None:
            artifact_port = self.artifact_port if n == 1 else free_port()
        svc = ServiceProcess(
            f"management-{n}",
            [
                sys.executable,
                "-m",
                "twelvefactor_services.management.cli",
                "serve",
                *self._service_args("management"),
                "--db",
                str(run / "registry.db"),
                "--instance",
                str(n),
                "--http-port",
                str(port),
                "--artifact-host",
                self.address,
                "--artifact-port",
                str(artifact_port),
                "--artifact-cert",
                ARTIFACT_CERT,
            ],
            run,
            http_port=port,
            artifact_port=artifact_port,
        )
        self.services.append(svc)
        return svc

    def solution(
        self,
        *,
        webhook: str | None = None,
        max_backoff: float | None = None,
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
            str(run / "solution.db"),
            "--archive-dir",
            str(run / "archive"),
            "--instance",
            str(n),
        ]
        if webhook:
            argv += ["--webhook", webhook]
        if max_backoff is not None:
            argv += ["--max-backoff", str(max_backoff)]
        if proxy_config is not None:
            argv += ["--proxy-config", str(proxy_config)]
        svc = ServiceProcess(f"solution-{n}", argv, run)
        self.services.append(svc)
        return svc

    def _service_args(self, name: str) -> list[str]:
        return [
            "--pki",
            str(self.pki.root),
            "--broker-host",
            LOCALHOST,
            "--broker-port",
            str(self.broker.cfg.service_port),
        ]

    @property
    def registry_db(self) -> Path:
        return self.root / "management" / "registry.db"

    @property
    def solution_db(self) -> Path:
        return self.root / "solution" / "solution.db"

    @property
    def artifact_dir(self) -> Path:
        return self.root / "management" / "artifacts"

    @property
    def archive_dir(self) -> Path:
        return self.root / "solution" / "archive"

    def start_all(
        self, *, webhook: str | None = None, max_backoff: float | None = None
    ) -> tuple[ServiceProcess, ServiceProcess]:
        """Broker (if not running), one management and one solution copy, all ready."""
        if not self.broker.running:
            self.start_broker()
        management = self.management()
        solution = self.solution(webhook=webhook, max_backoff=max_backoff)
        management.start()
        solution.start()
        return management, solution

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.broker.stop()
