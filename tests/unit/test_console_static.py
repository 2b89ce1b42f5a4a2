"""The console's files as the operator API serves them: only files of the console folder, by
name, with a fixed content type, `Cache-Control: no-cache` and the strict CSP on every answer
(errors included); `/` leads to `/console/`. And the events feed over HTTP: a bad cursor is
refused, and a waiting request answers when something happens."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers import Answer, ConsoleApi
from twelvefactor_services.management import http_api, registry
from twelvefactor_services.management.logic import parse_report

from testbed.pace import PACE, ROUND_TRIP

pytestmark = pytest.mark.unit


def get(api: ConsoleApi, path: str, host: str | None = None) -> Answer:
    """GET ``path`` exactly as given (unnormalised), with no token."""
    return api.send("GET", path, host=host)


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
    api: ConsoleApi,
) -> None:
    page = get(api, "/console/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'"
    )
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = get(api, "/console/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    for path in ("/", "/console"):
        moved = get(api, path)
        assert (moved.status, moved.headers["Location"]) == (302, "/console/"), path
    for path in (
        "/console/../http_api.py",
        "/console/%2e%2e/http_api.py",
        "/console/vendor/",
        "/console/vendor/uplot/",
        "/console/vendor/uplot/LICENSE",
        "/console/nothing.js",
    ):
        answer = get(api, path)
        assert answer.status == 404, path
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self';"), path
        assert answer.headers["Cache-Control"] == "no-cache", path
    refused = get(api, "/console/", host="attacker.example")
    assert refused.status == 421 and "Content-Security-Policy" in refused.headers
    # the API itself is unchanged: JSON, a token needed
    assert get(api, "/devices").status == 401


def test_the_events_feed_waits_for_the_next_event(
    api: ConsoleApi,
) -> None:
    status, first = api("GET", "/events", api.vera)
    assert status == 200 and first["events"] == []
    assert api("GET", "/events?after=o1", api.vera)[0] == 400
    # nothing new: a request with a short wait answers empty, with the same cursor
    assert api("GET", f"/events?after={first['next']}&wait=0", api.vera)[1] == first
    # a waiting request answers as soon as a device goes online; the feed's own wait
    # (EVENTS_WAIT) is the protocol's fixed timer
    limit = PACE.limit(ROUND_TRIP, fixed=http_api.EVENTS_WAIT)
    after = f"/events?after={first['next']}"
    got: dict[str, object] = {}
    waiting = threading.Thread(
        target=lambda: got.update(api("GET", after, api.vera, timeout=limit)[1])
    )
    started = time.monotonic()
    waiting.start()
    reg = registry.Registry(api.srv.db)
    raw = json.dumps({"v": 1, "online": True, "reason": "", "ts": time.time()}).encode()
    reg.apply("dev-a", parse_report("dev-a", "online", raw), time.time())
    waiting.join(limit)
    assert time.monotonic() - started < http_api.EVENTS_WAIT
    events = got["events"]
    assert isinstance(events, list)
    assert [(e["kind"], e["device"]) for e in events] == [("online", "dev-a")]
