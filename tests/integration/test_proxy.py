"""Calls by service name: an application on the device, the agent, the solution service,
and a local HTTP server on loopback standing in for the third-party API.

The device names the service; the solution service alone knows its URL and
credentials. The credentials are checked to arrive upstream and to appear
nowhere on the device side: not in its files, log and answers, and not in any
message the broker carries to the device (seen by a second subscriber with the
device's own certificate, as whoever holds the device would see them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twelvefactor_agent.localapi.client import AgentError, CallResponse
from twelvefactor_agent.localapi.proxycall import MAX_TIMEOUT

from testbed.hostagent import HostAgent
from testbed.pace import PACE, REFERENCE, ROUND_TRIP
from testbed.probe import Probe, ProbeError, Received
from testbed.stack import ServiceProcess, Stack, wait_until

API_KEY = "sk-live-5d1f0c9e-do-not-leak"
APP_ID = "appid-73ac41b2-do-not-leak"


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "session=upstream-secret")
        self.send_header("X-Upstream-Host", "internal.example")
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append(
                {"path": url.path, "query": query, "headers": dict(self.headers), "body": body}
            )
        if url.path == "/v1/now":
            city = query.get("city", ["?"])[0]
            self._reply(200, json.dumps({"city": city, "temp": 21.5}).encode())
        elif url.path == "/v1/echo":
            self._reply(201, body, self.headers.get("Content-Type", "application/octet-stream"))
        elif url.path == "/v1/fail":
            self._reply(500, b'{"error":"boom"}')
        elif url.path == "/v1/missing":
            self._reply(404, b'{"error":"no such thing"}')
        elif url.path == "/v1/slow":
            time.sleep(15)
            with contextlib.suppress(OSError):  # the proxy gave up on us, as it should
                self._reply(200, b"{}")
        elif url.path == "/v1/big":
            self._reply(200, b"x" * 100_000, "text/plain")
        else:
            self._reply(404, b"{}")

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def proxy_config(path: Path, upstream: Upstream) -> Path:
    path.write_text(
        f"""
[groups]
field = ["dev-p", "dev-p2"]

[services.weather]
url = "http://127.0.0.1:{upstream.port}/v1"
headers = {{ "X-Api-Key" = "{API_KEY}" }}
query = {{ appid = "{APP_ID}" }}
methods = ["GET", "POST"]
timeout = 5
max_response_bytes = 10000
groups = ["field"]

[services.private]
url = "http://127.0.0.1:{upstream.port}/v1"
devices = ["dev-other"]
"""
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def proxied(stack: Stack, upstream: Upstream, tmp_path: Path) -> ServiceProcess:
    management = stack.management()
    management.start()
    solution = stack.solution(proxy_config=proxy_config(tmp_path / "proxy.toml", upstream))
    solution.start()
    return solution


@pytest.fixture
def agents() -> Iterator[list[HostAgent]]:
    made: list[HostAgent] = []
    yield made
    for agent in made:
        agent.close()


def online_agent(stack: Stack, agents: list[HostAgent], device: str) -> HostAgent:
    agent = HostAgent(stack, device, stack.root.parent / device)
    agents.append(agent)
    PACE.timed("agent", agent.start)  # this run's pace (testbed/pace.py)
    wait_until(
        lambda: agent.client().status()["solution"] == "online",
        timeout=PACE.steps_of("online"),
        what=f"{device} solution session online",
    )
    return agent


def _texts(message: Received) -> list[bytes]:
    """A proxy message as bytes, and its body decoded (base64 would hide a key)."""
    out = [message.payload]
    body = message.json().get("body")
    if body is not None:
        out.append(base64.b64decode(body, validate=True))
    return out


def collect(eye: Probe, until: Callable[[list[Received]], bool], timeout: float) -> list[Received]:
    """Messages the eye receives until `until(messages)` holds; fails with what it saw."""
    seen: list[Received] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        try:
            seen.append(eye.wait_for(timeout=max(left, 0.01)))
        except ProbeError:
            pytest.fail(f"within {timeout:.0f} s the eye saw {[m.payload[:80] for m in seen]}")
    return seen


def error_of(agent: HostAgent, *args: Any, **kw: Any) -> AgentError:
    with pytest.raises(AgentError) as info:
        agent.client().call(*args, **kw)
    return info.value


def test_round_trip_errors_and_no_credentials_on_the_device(
    stack: Stack,
    proxied: ServiceProcess,
    upstream: Upstream,
    agents: list[HostAgent],
    probes: Callable[..., Probe],
) -> None:
    agent = online_agent(stack, agents, "dev-p")
    # Whoever holds the device's key sees what the broker sends it.
    eye = probes(stack.solution_endpoint, stack.device("dev-p"), "dev-p-eye")
    assert not eye.subscribe("sol/dev-p/down/#").is_failure
    answers: list[CallResponse] = []
    started = time.monotonic()

    reply = agent.client().call("weather", path="/now", query={"city": "Lyon"})
    answers.append(reply)
    assert reply.status == 200
    assert json.loads(reply.body) == {"city": "Lyon", "temp": 21.5}
    assert reply.headers["content-type"] == "application/json"
    assert "set-cookie" not in reply.headers and "x-upstream-host" not in reply.headers
    seen = upstream.seen[-1]
    assert seen["path"] == "/v1/now"
    assert seen["headers"]["X-Api-Key"] == API_KEY, "the service injected the key"
    assert seen["query"]["appid"] == [APP_ID]
    first_call = time.monotonic() - started

    # A body, an allowed header; a 4xx is an answer, not an error.
    reply = agent.client().call(
        "weather",
        "POST",
        "/echo",
        headers={"Content-Type": "text/plain"},
        body=b"hello upstream",
    )
    answers.append(reply)
    assert (reply.status, reply.body) == (201, b"hello upstream")
    assert reply.headers["content-type"] == "text/plain"
    reply = agent.client().call("weather", path="/missing")
    answers.append(reply)
    assert reply.status == 404

    # The command-line form prints the body.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "twelvefactor_agent.cli",
            "call",
            "weather",
            "--path",
            "/now",
            "--query",
            "city=Paris",
            "--socket",
            str(agent.socket),
        ],
        capture_output=True,
        timeout=PACE.limit(REFERENCE["cli"] + ROUND_TRIP),
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == {"city": "Paris", "temp": 21.5}
    cli_outputs = cli.stdout + cli.stderr

    # Each failure has its own code.
    assert error_of(agent, "traffic").code == "unknown_service"
    assert error_of(agent, "private").code == "not_allowed"
    assert error_of(agent, "weather", "DELETE", "/now").code == "not_allowed"
    assert error_of(agent, "weather", headers={"Authorization": "Bearer x"}).code == "bad_request"
    assert error_of(agent, "weather", path="/../admin").code == "bad_request"
    failed = error_of(agent, "weather", path="/fail")
    assert (failed.code, failed.status) == ("upstream_error", 500)
    slow = error_of(agent, "weather", path="/slow")
    # The service's own timeout for the name, not the agent's 30 s wait.
    assert (slow.code, slow.message) == ("timeout", "weather did not answer within 5 s")
    assert error_of(agent, "weather", path="/big").code == "too_large"
    sock = str(agent.socket)
    cli = subprocess.run(
        [sys.executable, "-m", "twelvefactor_agent.cli", "call", "traffic", "--socket", sock],
        capture_output=True,
        timeout=PACE.limit(REFERENCE["cli"] + ROUND_TRIP),
    )
    assert cli.returncode == 1 and b"unknown_service" in cli.stderr
    assert not any(s["path"] in ("/v1/../admin", "/admin") for s in upstream.seen)

    # A device outside the allowlist.
    other = online_agent(stack, agents, "dev-q")
    assert error_of(other, "weather", path="/now").code == "not_allowed"

    # The credentials appear nowhere on the device side: in what the broker carried to
    # it (every answer, in order: the CLI's unknown_service was the last) ...
    def ends_with_both_refusals(seen: list[Received]) -> bool:
        return sum(b'"unknown_service"' in m.payload for m in seen) == 2

    down = collect(
        eye, ends_with_both_refusals, timeout=max(PACE.limit(ROUND_TRIP), 20 * first_call)
    )
    bodies = [t for m in down for t in _texts(m)]
    assert b'{"city": "Lyon", "temp": 21.5}' in bodies and b"hello upstream" in bodies
    assert {m.topic for m in down} == {"sol/dev-p/down/proxy"}
    # ... and in its log, configuration, state and answers.
    agent.stop()
    secrets = (API_KEY.encode(), APP_ID.encode())
    places: dict[str, bytes] = {
        "agent log": agent.log_file.read_bytes(),
        "agent config": agent.config_file.read_bytes(),
        "answers": b"".join(repr(a).encode() for a in answers) + cli_outputs,
    }
    for i, message in enumerate(down):
        for j, text in enumerate(_texts(message)):
            places[f"message {i} to the device ({'body' if j else 'payload'})"] = text
    for path in agent.data_dir.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    assert len(places) > 3 + len(down)
    for where, content in places.items():
        for secret in secrets:
            assert secret not in content, f"{secret!r} found in {where}"
    # The upstream had them on every request that reached it.
    assert len(upstream.seen) >= 6
    for request in upstream.seen:
        assert request["headers"].get("X-Api-Key") == API_KEY, request["path"]
        assert request["query"].get("appid") == [APP_ID], request["path"]


# 200 concurrent calls, 20 pipelined ones and the broker's stop: 3.5 s in the reference run
# (testbed/pace.py), the limit of any one call here
CALLS = 3.5


def test_two_hundred_concurrent_calls_and_offline(
    stack: Stack, proxied: ServiceProcess, upstream: Upstream, agents: list[HostAgent]
) -> None:
    agent = online_agent(stack, agents, "dev-p2")

    def one(i: int) -> tuple[int, CallResponse]:
        with agent.client() as client:
            query = {"city": f"c{i}"}
            # the protocol bounds a call's timeout (MAX_TIMEOUT): a slow run waits that long
            timeout = min(PACE.limit(CALLS), MAX_TIMEOUT)
            return i, client.call("weather", path="/now", query=query, timeout=timeout)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    took = time.monotonic() - started
    assert len(results) == 200
    for i, reply in results:
        assert reply.status == 200
        assert json.loads(reply.body)["city"] == f"c{i}", "each answer reached its own caller"
    print(f"200 concurrent calls in {took:.1f} s")

    # Pipelined on one connection, answers come back in order.
    lines = [
        {"op": "call", "service": "weather", "path": "/now", "query": {"city": f"p{i}"}}
        for i in range(20)
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PACE.limit(CALLS))
        sock.connect(str(agent.socket))
        sock.sendall(b"".join(json.dumps(x).encode() + b"\n" for x in lines) + b'{"op":"status"}\n')
        received = b""
        while received.count(b"\n") < 21:
            chunk = sock.recv(65536)
            assert chunk, "the agent closed the connection"
            received += chunk
    answers = [json.loads(line) for line in received.splitlines()]
    cities = [json.loads(base64.b64decode(a["body"]))["city"] for a in answers[:20]]
    assert cities == [f"p{i}" for i in range(20)]
    assert answers[20]["ok"] is True and answers[20]["device"] == "dev-p2"

    # Offline: the agent answers at once that the service cannot be reached.
    stack.broker.stop()
    wait_until(lambda: agent.client().status()["solution"] == "offline", what="offline")
    assert error_of(agent, "weather", path="/now").code == "unavailable"
