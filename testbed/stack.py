"""The reference cloud side on this machine for tests, benchmarks and the demo.

The product's ServicesStack starts the broker and the services (the hub runs
on it too); this Stack adds what only a test needs: a PKI made on first use,
device identities, the listeners as endpoints on 127.0.0.1, one call that
starts everything, and small HTTP and polling helpers. Everything runs as
child processes with ports picked free at start; ``Stack.stop()`` ends what
it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twelvefactor_agent.update.download import ClientIdentity
from twelvefactor_services.broker import Broker
from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.pki import Validity
from twelvefactor_services.services_stack import (
    LOCALHOST,
    ServiceProcess,
    ServicesStack,
    free_port,
    make_pki,
)

from testbed.pace import PACE, ROUND_TRIP

__all__ = [
    "LOCALHOST",
    "ServiceProcess",
    "Stack",
    "free_port",
    "http_get",
    "http_send",
    "make_pki",
    "wait_until",
]

T = TypeVar("T")


def http_get(svc: ServiceProcess, path: str) -> tuple[int, Any]:
    """GET from a management copy's operator API as the stack's admin: (status, body)."""
    return http_send(svc, "GET", path)


def http_send(svc: ServiceProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A JSON request to a management copy's operator API as the stack's admin."""
    if svc.api is None:
        raise ValueError(f"{svc.name} has no operator API")
    return svc.api.request(method, path, body)


def download_identity(stack: Stack, device: str) -> ClientIdentity:
    """A device's certificate, key and CA as the agent's downloader takes them."""
    ident = stack.device(device)
    return ClientIdentity(ident.cert, ident.key, ident.ca)


def wait_until(
    condition: Callable[[], T | None], timeout: float | None = None, what: str = "condition"
) -> T:
    """Poll until ``condition()`` returns something truthy; that value, or TimeoutError.

    ``timeout`` comes from ``PACE.limit(...)``; by default, the limit of a round trip
    (ROUND_TRIP: a message through the broker and a service, seen in the registry)."""
    limit = PACE.limit(ROUND_TRIP) if timeout is None else timeout
    started = time.monotonic()
    while True:
        value = condition()
        took = time.monotonic() - started
        if value:
            PACE.waited(what, took, limit)
            return value
        if took > limit:
            raise TimeoutError(f"{what} not met within {limit:.1f} s ({PACE.summary()[0]})")
        time.sleep(0.1)


# The client id suffix of a test's observer of a device (BrokerConfig.observer_suffix).
OBSERVER_SUFFIX = "-eye"


class Stack(ServicesStack):
    """PKI + broker + services in ``root``; start the pieces a test needs."""

    def __init__(
        self,
        root: Path,
        *,
        address: str = LOCALHOST,
        solution_database: str | None = None,
        management_database: str | None = None,
    ) -> None:
        pki_dir = root / "pki"
        if not (pki_dir / "ca.crt").exists():
            make_pki(pki_dir)
        # A test may watch what the broker carries to a device as `<id>-eye`.
        super().__init__(
            root,
            address=address,
            observer_suffix=OBSERVER_SUFFIX,
            solution_database=solution_database,
            management_database=management_database,
        )

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

    def api_options(self, svc: ServiceProcess) -> list[str]:
        """The CLI options that reach ``svc``'s operator API as the stack's admin."""
        if svc.api is None:
            raise ValueError(f"{svc.name} has no operator API")
        self.admin_token()
        return [
            "--url",
            svc.api.url,
            "--ca",
            str(self.pki.ca_cert),
            "--token-file",
            str(self.admin_token_file),
        ]

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
        """The broker, its start timed for this run's pace (testbed/pace.py)."""
        PACE.timed("broker", lambda: self.broker.start(PACE.steps_of("broker")))
        return self.broker

    def start_all(
        self, *, webhook: str | None = None, max_backoff: float | None = None
    ) -> tuple[ServiceProcess, ServiceProcess]:
        """Broker (if not running), one management and one solution copy, all ready."""
        if not self.broker.running:
            self.start_broker()
        management = self.management()
        solution = self.solution(webhook=webhook, max_backoff=max_backoff)
        started = time.monotonic()
        management.start(PACE.steps_of("services"))
        solution.start(PACE.steps_of("services"))
        PACE.record("services", time.monotonic() - started)
        return management, solution
