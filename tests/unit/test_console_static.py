"""The console's files as the operator API serves them: only files of the console folder, by
name, with a fixed content type, `Cache-Control: no-cache` and the strict CSP on every answer
(errors included); `/` leads to `/console/`. And the events feed over HTTP: a bad cursor is
refused, and a waiting request answers when something happens."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twelvefactor_services.management import http_api, operators, registry
from twelvefactor_services.management.logic import parse_report

pytestmark = pytest.mark.unit


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = folder / "api.crt", folder / "api.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[http_api.ApiServer, Path]]:
    crt, key = self_signed(tmp_path)
    srv = http_api.ApiServer(
        ("127.0.0.1", 0),
        tmp_path / "registry.db",
        lambda: {"ok": True},
        http_api.server_context(crt, key),
        ["127.0.0.1"],
    )
    srv.start()
    try:
        yield srv, crt
    finally:
        srv.shutdown()
        srv.server_close()


def get(
    server: tuple[http_api.ApiServer, Path], path: str, host: str | None = None
) -> http.client.HTTPResponse:
    srv, ca = server
    port = srv.server_address[1]
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.putrequest("GET", path, skip_host=True)  # the path exactly as given, unnormalised
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_the_console_files_have_their_types() -> None:
    for name, want in [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    ]:
        found = http_api.console_file(name)
        assert found is not None and found[0] == want, name
        assert found[1], name


def test_no_name_leads_out_of_the_console_folder() -> None:
    for name in [
        "../http_api.py",
        "../openapi.json",
        "..",
        "vendor/../index.html",
        "/etc/passwd",
        "%2e%2e/http_api.py",
        ".hidden.js",
        "vendor/uplot",  # a folder: no listing
        "vendor/uplot/LICENSE",  # not a served type
        "index.html/",
        "index.htm",
        "vendor//uplot/uPlot.min.css",
        "a\\..\\http_api.py",
    ]:
        assert http_api.console_file(name) is None, name


def test_every_console_answer_has_the_strict_policy(
    server: tuple[http_api.ApiServer, Path],
) -> None:
    page = get(server, "/console/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'"
    )
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = get(server, "/console/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    for path in ("/", "/console"):
        moved = get(server, path)
        assert (moved.status, moved.headers["Location"]) == (302, "/console/"), path
    for path in (
        "/console/../http_api.py",
        "/console/%2e%2e/http_api.py",
        "/console/vendor/",
        "/console/vendor/uplot/",
        "/console/vendor/uplot/LICENSE",
        "/console/nothing.js",
    ):
        answer = get(server, path)
        assert answer.status == 404, path
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self';"), path
        assert answer.headers["Cache-Control"] == "no-cache", path
    refused = get(server, "/console/", host="attacker.example")
    assert refused.status == 421 and "Content-Security-Policy" in refused.headers
    # the API itself is unchanged: JSON, a token needed
    assert get(server, "/devices").status == 401


def call(
    server: tuple[http_api.ApiServer, Path], path: str, token: str
) -> tuple[int, dict[str, object]]:
    srv, ca = server
    port = srv.server_address[1]
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def test_the_events_feed_waits_for_the_next_event(
    server: tuple[http_api.ApiServer, Path],
) -> None:
    srv, _ = server
    db = operators.connect(srv.db_path)
    operators.add_operator(db, "vera", "viewer", None, time.time())
    token = operators.create_token(db, "vera", "test", time.time(), None)["token"]
    db.close()
    status, first = call(server, "/events", token)
    assert status == 200 and first["events"] == []
    assert call(server, "/events?after=o1", token)[0] == 400
    # nothing new: a request with a short wait answers empty, with the same cursor
    assert call(server, f"/events?after={first['next']}&wait=0", token)[1] == first
    # a waiting request answers as soon as a device goes online
    got: dict[str, object] = {}
    waiting = threading.Thread(
        target=lambda: got.update(call(server, f"/events?after={first['next']}", token)[1])
    )
    started = time.monotonic()
    waiting.start()
    reg = registry.Registry(srv.db_path)
    raw = json.dumps({"v": 1, "online": True, "reason": "", "ts": time.time()}).encode()
    reg.apply("dev-a", parse_report("dev-a", "online", raw), time.time())
    reg.close()
    waiting.join(http_api.EVENTS_WAIT + 10)
    assert time.monotonic() - started < http_api.EVENTS_WAIT
    events = got["events"]
    assert isinstance(events, list)
    assert [(e["kind"], e["device"]) for e in events] == [("online", "dev-a")]
