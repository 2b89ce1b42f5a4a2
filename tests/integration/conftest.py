"""Fixtures for the integration tier: a PKI, a running broker, running services.

The fixtures are thin: the work is done by plain classes in ``testbed.stack``
so the end-to-end tests and the demo reuse them. A missing host tool (mosquitto,
openssl) fails the test, never skips it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_services.broker import BrokerError
from twelvefactor_services.mqtt import Endpoint, Identity
from twelvefactor_services.process import LaunchError

from testbed.pace import PACE
from testbed.postgres import Postgres, PostgresError, bindir
from testbed.probe import Probe
from testbed.stack import ServiceProcess, Stack


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail(
            "this test needs 'openssl' (a Debian package): run scripts/setup", pytrace=False
        )
    return path


@pytest.fixture
def run_stack() -> Iterator[Callable[[Stack], Stack]]:
    """Starts a stack's broker (a test may prepare the stack first); stops it at the end."""
    started: list[Stack] = []

    def start(s: Stack) -> Stack:
        try:
            s.start_broker()
        except BrokerError as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def stack(tmp_path: Path, run_stack: Callable[[Stack], Stack]) -> Stack:
    """PKI in tmp_path and a broker running on free ports (services: start what you need)."""
    return run_stack(Stack(tmp_path / "stack"))


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Factory for connected MQTT probes; all are disconnected at teardown."""
    made: list[Probe] = []

    def make(endpoint: Endpoint, identity: Identity, client_id: str, **kw: Any) -> Probe:
        p = Probe(endpoint, identity, client_id, **kw)
        p.connect()
        made.append(p)
        return p

    yield make
    for p in made:
        p.disconnect()


@pytest.fixture
def management(stack: Stack) -> ServiceProcess:
    """One running management service on the stack (stopped with the stack)."""
    svc = stack.management()
    try:
        svc.start(PACE.steps_of("services"))  # one copy: within the two copies' limit
    except LaunchError as exc:
        pytest.fail(str(exc), pytrace=False)
    return svc


@pytest.fixture
def services(stack: Stack) -> tuple[ServiceProcess, ServiceProcess]:
    """Running management and solution services on the stack: (management, solution).

    Devices connect to ``stack.management_endpoint`` / ``stack.solution_endpoint``
    with ``stack.device(id)``; the registry is on ``management.api``, the
    archive in ``stack.archive_dir``.
    """
    try:
        return stack.start_all(max_backoff=2.0)
    except LaunchError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL server, started by the tests in a folder of its own on a free
    port (never the machine's own cluster); stopped at the end of the session."""
    try:
        bindir()
    except PostgresError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    server = Postgres()
    try:
        server.start()
    except PostgresError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its state: a SQLite file (the embedded default), or a fresh
    database of the session's PostgreSQL server; every test that takes it runs on both."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    server: Postgres = request.getfixturevalue("postgres")
    return server.new_database()
