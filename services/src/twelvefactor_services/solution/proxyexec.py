"""The proxy's I/O: requests checked by `proxy.plan`, made with http.client on a thread pool.

A call is interactive, so nothing is stored or retried: the MQTT request is
acknowledged when it arrives (a copy that dies mid-call does not get it
again, so no call is made twice) and the answer goes to the device's
response topic once. The timeout covers the whole exchange (connect, send,
headers, body), not each socket operation.
"""

from __future__ import annotations

import errno
import http.client
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twelvefactor_services.solution.proxy import (
    RESPONSE_HEADERS,
    Plan,
    Refused,
    answer_error,
    answer_ok,
    plan,
)
from twelvefactor_services.solution.proxyconfig import ProxyConfig

log = logging.getLogger("twelvefactor.proxy")
CHUNK = 64 * 1024

# (response topic, correlation data, payload)
Publish = Callable[[str, bytes, bytes], None]


def call(p: Plan) -> bytes:
    """Make the planned HTTP request; the response payload for the device."""
    deadline = time.monotonic() + p.timeout
    up = p.upstream
    conn: http.client.HTTPConnection
    if up.scheme == "https":
        conn = http.client.HTTPSConnection(
            up.host, up.port, timeout=p.timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(up.host, up.port, timeout=p.timeout)
    try:
        conn.request(p.method, p.target, body=p.body or None, headers=p.headers)
        _shorten(conn, deadline)
        resp = conn.getresponse()
        body = bytearray()
        while True:
            _shorten(conn, deadline)
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            body += chunk
            if len(body) > up.max_response_bytes:
                return answer_error(
                    "too_large",
                    f"the response of {up.name} is over {up.max_response_bytes} bytes",
                    resp.status,
                )
        if resp.status >= 500:
            return answer_error("upstream_error", f"{up.name} answered {resp.status}", resp.status)
        headers = resp.getheaders()
        passed_on = [(k, v) for k, v in headers if k.lower() in RESPONSE_HEADERS]
        if _leaks(up.secrets(), bytes(body), passed_on):
            log.warning("the answer of %s holds its credentials: not passed on", up.name)
            return answer_error(
                "upstream_error", f"the answer of {up.name} was withheld (it echoed credentials)"
            )
        return answer_ok(resp.status, headers, bytes(body))
    except TimeoutError:
        return answer_error("timeout", f"{up.name} did not answer within {p.timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        # No text from the exception: it may name the upstream's host.
        why = (
            errno.errorcode.get(exc.errno, "error")
            if isinstance(exc, OSError) and exc.errno
            else type(exc).__name__
        )
        return answer_error("upstream_error", f"cannot reach {up.name} ({why})")
    finally:
        conn.close()


def _leaks(secrets: list[str], body: bytes, headers: list[tuple[str, str]]) -> bool:
    """Whether an answer holds an injected credential, as sent or URL-encoded (an upstream
    that echoes the request URL would hand the device a key injected as a query value)."""
    text = b"\n".join([body, *(v.encode("latin-1", "replace") for _, v in headers)])
    for secret in secrets:
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        if any(f.encode() in text for f in forms):
            return True
    return False


def _shorten(conn: http.client.HTTPConnection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if conn.sock is not None:
        conn.sock.settimeout(left)


class Proxy:
    """Calls in flight are bounded three ways: in all (`max_pending`), per device
    (`max_per_device`) and per proxy group (`max_per_group`), so that one device, or
    one group, with slow calls cannot make the proxy "busy" for everyone else."""

    def __init__(
        self,
        config: ProxyConfig,
        publish: Publish,
        workers: int = 32,
        max_pending: int = 2000,
        max_per_device: int = 256,
        max_per_group: int = 1000,
    ) -> None:
        self.config = config
        self.publish = publish
        self.max_pending = max_pending
        self.max_per_device = max_per_device
        self.max_per_group = max_per_group
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="proxy")
        self._lock = threading.Lock()
        self.pending = 0
        self.per_device: dict[str, int] = {}
        self.per_group: dict[str, int] = {}
        self.calls = 0  # upstream calls made (tests and logs)

    def _groups(self, device: str) -> list[str]:
        return [g for g, members in self.config.groups.items() if device in members]

    def _admit(self, device: str) -> str | None:
        """Count a call in; None, or why it is refused (the caller holds the lock)."""
        groups = self._groups(device)
        if self.pending >= self.max_pending:
            return "the proxy is busy"
        if self.per_device.get(device, 0) >= self.max_per_device:
            return f"{device} has {self.max_per_device} calls in flight already"
        for g in groups:
            if self.per_group.get(g, 0) >= self.max_per_group:
                return f"group {g} has {self.max_per_group} calls in flight already"
        self.pending += 1
        self.per_device[device] = self.per_device.get(device, 0) + 1
        for g in groups:
            self.per_group[g] = self.per_group.get(g, 0) + 1
        return None

    def _release(self, device: str) -> None:
        self.pending -= 1
        left = self.per_device[device] - 1
        if left:
            self.per_device[device] = left
        else:
            del self.per_device[device]
        for g in self._groups(device):
            self.per_group[g] -= 1

    def handle(self, device: str, payload: bytes, properties: Any) -> None:
        """One request from the MQTT thread: refuse it at once or queue the call."""
        decision = plan(
            self.config,
            device,
            payload,
            getattr(properties, "ResponseTopic", None),
            getattr(properties, "CorrelationData", None),
            getattr(properties, "MessageExpiryInterval", None),
        )
        if isinstance(decision, Refused):
            log.info(
                "proxy request from %s refused: %s: %s", device, decision.error, decision.message
            )
            if decision.reply is not None:
                topic, correlation = decision.reply
                self.publish(topic, correlation, answer_error(decision.error, decision.message))
            return
        with self._lock:
            refused = self._admit(device)
        if refused is not None:
            log.info("proxy request from %s refused: %s", device, refused)
            topic, correlation = decision.reply
            self.publish(topic, correlation, answer_error("unavailable", refused))
            return
        self.pool.submit(self._run, decision)

    def _run(self, p: Plan) -> None:
        try:
            answer = call(p)
        except Exception:  # a bug must not leave the device waiting
            log.exception("proxy call to %s failed", p.upstream.name)
            answer = answer_error("upstream_error", f"the call to {p.upstream.name} failed")
        finally:
            with self._lock:
                self._release(p.device)
                self.calls += 1
        topic, correlation = p.reply
        log.info("%s %s %s for %s", p.method, p.upstream.name, p.target.split("?")[0], p.device)
        self.publish(topic, correlation, answer)

    def close(self) -> None:
        # Queued calls are dropped (their devices time out); running ones end by their timeout.
        self.pool.shutdown(wait=False, cancel_futures=True)
