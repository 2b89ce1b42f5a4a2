"""Fixtures of the unit tier: the operator API in this process, as the console's tests use it.

The API's TLS certificate comes from the services' own PKI (`helpers.api_certificate`),
as the management service's does, and requests go through the one HTTPS client of the
tests (`helpers.https_request`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ConsoleApi, api_certificate
from twelvefactor_services.management import http_api
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.store import Db


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ConsoleApi]:
    """The operator API running in this process on a free port, over TLS."""
    cert, key, ca = api_certificate(tmp_path / "pki")
    srv = http_api.ApiServer(
        ("127.0.0.1", 0),
        Db(tmp_path / "registry.db"),
        lambda: {"ok": True},
        http_api.server_context(cert, key),
        ["127.0.0.1"],
        artifacts=ArtifactStore(tmp_path / "artifacts"),
    )
    srv.start()
    try:
        yield ConsoleApi(srv, ca)
    finally:
        srv.shutdown()
        srv.server_close()
