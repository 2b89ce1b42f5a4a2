"""The proxy's guards: calls in flight per device and group, and no echoed credentials.

Issue 19, findings 9 and 12.

The real `Proxy` (thread pool, http.client) against a real local upstream that holds
every call until released; the MQTT side is the publish callback the service gives it.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from twelvefactor_services.solution import proxyconfig
from twelvefactor_services.solution.proxy import response_topic
from twelvefactor_services.solution.proxyexec import Proxy

from testbed.stack import wait_until

CALL_TIMEOUT = 30  # the calls' own timeout (a protocol field): a timer, not a machine's speed

pytestmark = pytest.mark.integration


class HeldUpstream:
    """Answers 200 to every call, but only once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hook.arrived += 1
                hook.release.wait(CALL_TIMEOUT)  # held until the test releases it
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    up = HeldUpstream()
    yield up
    up.release.set()
    up.server.shutdown()
    up.server.server_close()


def test_calls_in_flight_are_bounded_per_device_and_per_group(upstream: HeldUpstream) -> None:
    config = proxyconfig.parse(
        {
            "groups": {"field": ["dev-a", "dev-b"], "lab": ["dev-c"]},
            "services": {
                "slow": {"url": f"http://127.0.0.1:{upstream.port}", "groups": ["field", "lab"]}
            },
        }
    )
    answers: dict[bytes, dict[str, Any]] = {}
    lock = threading.Lock()

    def publish(topic: str, correlation: bytes, payload: bytes) -> None:
        with lock:
            answers[correlation] = json.loads(payload)

    proxy = Proxy(config, publish, workers=64, max_pending=100, max_per_device=8, max_per_group=12)
    request = json.dumps({"v": 1, "service": "slow", "path": "/", "timeout": CALL_TIMEOUT})
    request = request.encode()

    def call(device: str, n: int) -> bytes:
        correlation = f"{device}/{n}".encode()
        props = SimpleNamespace(ResponseTopic=response_topic(device), CorrelationData=correlation)
        proxy.handle(device, request, props)
        return correlation

    try:
        flood = [call("dev-a", i) for i in range(20)]  # 8 go, 12 refused at once
        refused_a = [answers[c] for c in flood if c in answers]
        assert len(refused_a) == 12
        assert all(
            a == {"v": 1, "ok": False, "error": "unavailable", "message": a["message"]}
            for a in refused_a
        )
        assert refused_a[0]["message"] == "dev-a has 8 calls in flight already"
        b = [call("dev-b", i) for i in range(6)]  # the group "field" has room for 4 more
        refused_b = [answers[c]["message"] for c in b if c in answers]
        assert refused_b == ["group field has 12 calls in flight already"] * 2
        c = call("dev-c", 0)  # another group: not held back by "field"
        wait_until(lambda: upstream.arrived == 13, what="13 calls at the upstream")
        assert c not in answers
        upstream.release.set()
        wait_until(lambda: len(answers) == 27, what="every call answered")
        ok = [c for c, a in answers.items() if a.get("ok")]
        assert len(ok) == 13 and c in ok
        assert base64.b64decode(answers[c]["body"]) == b"ok"
        # Once answered, the device may call again.
        again = call("dev-a", 99)
        wait_until(lambda: answers.get(again, {}).get("ok") is True, what="dev-a again")
        assert (
            proxy.pending == 0 and proxy.per_device == {} and set(proxy.per_group.values()) == {0}
        )
    finally:
        upstream.release.set()
        proxy.close()


class EchoUpstream:
    """Answers with what it was asked: the request line, and the headers in its own."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = self.path.encode() if "/echo" in self.path else b"weather: fine"
                self.send_response(200)
                if "/header" in self.path:
                    self.send_header("X-Seen", self.headers.get("Authorization", ""))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize(
    ("path", "withheld"),
    [("/now", False), ("/echo", True), ("/echo/header", True), ("/header", False)],
)
def test_an_answer_that_echoes_the_credentials_is_withheld(path: str, withheld: bool) -> None:
    up = EchoUpstream()
    config = proxyconfig.parse(
        {
            "services": {
                "w": {
                    "url": f"http://127.0.0.1:{up.port}",
                    "devices": ["dev-a"],
                    "query": {"appid": "key with/slash+plus"},
                    "headers": {"Authorization": "Bearer TOKEN-123"},
                }
            }
        }
    )
    got: list[dict[str, Any]] = []
    proxy = Proxy(config, lambda _t, _c, payload: got.append(json.loads(payload)))
    try:
        request = {"v": 1, "service": "w", "path": path, "timeout": 10}
        props = SimpleNamespace(ResponseTopic=response_topic("dev-a"), CorrelationData=b"c")
        proxy.handle("dev-a", json.dumps(request).encode(), props)
        wait_until(lambda: got, what="the answer")
        answer = got[0]
        text = json.dumps(answer) + base64.b64decode(answer.get("body", "")).decode()
        if withheld:
            assert answer == {
                "v": 1,
                "ok": False,
                "error": "upstream_error",
                "message": "the answer of w was withheld (it echoed credentials)",
            }
        else:
            assert answer["ok"] is True and answer["status"] == 200
        for secret in ("key with/slash+plus", "key+with%2Fslash%2Bplus", "TOKEN-123"):
            assert secret not in text
    finally:
        proxy.close()
        up.server.shutdown()
        up.server.server_close()
