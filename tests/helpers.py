"""Checks shared by every tier (a missing host tool or root fails, never skips) and the
one HTTPS client the tests use to send a request exactly as they mean it, with the
operator API run in the test's own process (the unit tests of the console's routes).

scripts/setup installs every tool the tests use, so in CI a missing one is a
broken set-up that must show, not a silently smaller test run.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from twelvefactor_services.management import http_api, operators
from twelvefactor_services.pki import Pki

from testbed.pace import PACE, ROUND_TRIP


def require_tool(name: str) -> str:
    """Path of a host tool, or fail with the package hint."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"this test needs '{name}' (a Debian package): run scripts/setup", pytrace=False
        )
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, nftables)", pytrace=False)


# The smallest valid agent configuration (device dev-001, hub at 10.77.0.1):
# the base the agent's unit and fuzz tests add their own keys to.
MINIMAL_AGENT_CONFIG = """
[device]
id = "dev-001"
certificate = "/data/identity/device.crt"
key = "/data/identity/device.key"
ca = "/data/identity/ca.crt"
[management]
host = "10.77.0.1"
[solution]
host = "10.77.0.1"
"""


class Answer(NamedTuple):
    """An HTTP answer: status, headers and the body's bytes."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def https_request(
    port: int,
    ca: Path,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Answer:
    """One request to 127.0.0.1:``port`` over TLS checked against ``ca``, sent exactly as
    given: the path not normalised, these headers and no others (``Host`` is
    127.0.0.1:``port`` unless given, ``Content-Length`` the body's unless given). The
    socket's limit is a round trip's at this run's pace (testbed/pace.py)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    limit = PACE.limit(ROUND_TRIP) if timeout is None else timeout
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=limit)
    sent = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    if body is not None:
        sent.setdefault("Content-Length", str(len(body)))
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def api_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (cert, key, CA cert)."""
    pki = Pki(folder)
    pki.init()
    paths = pki.server("api", ips=["127.0.0.1"])
    return paths.cert, paths.key, pki.ca_cert


class ConsoleApi:
    """The operator API in this process (its registry, an artifact store), with an
    operator's token (olga) and a viewer's (vera)."""

    def __init__(self, srv: http_api.ApiServer, ca: Path) -> None:
        self.srv, self.ca = srv, ca
        db = srv.db
        now = time.time()
        operators.add_operator(db, "olga", "operator", None, now)
        operators.add_operator(db, "vera", "viewer", None, now)
        self.olga = operators.create_token(db, "olga", "test", now, None)["token"]
        self.vera = operators.create_token(db, "vera", "test", now, None)["token"]

    @property
    def port(self) -> int:
        port: int = self.srv.server_address[1]
        return port

    def send(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        *,
        host: str | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request as ``token``'s holder (none: no Authorization header), with
        ``host`` as its Host header if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if host is not None:
            headers["Host"] = host
        return https_request(
            self.port, self.ca, method, path, body=body, headers=headers, timeout=timeout
        )

    def __call__(
        self,
        method: str,
        path: str,
        token: str | None,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """A JSON request: (status, the decoded answer)."""
        answer = self.send(method, path, token, body, timeout=timeout)
        return answer.status, json.loads(answer.body)

    def audit(self) -> list[dict[str, Any]]:
        return operators.audit(self.srv.db, limit=100, before=None)
