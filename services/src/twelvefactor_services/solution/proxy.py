"""Calls to third-party services by name: the decisions, without I/O.

A device publishes a request on `sol/<id>/up/proxy` with the MQTT 5 response
topic and correlation data. `plan` checks it (shape, the response topic is
the device's own `sol/<id>/down/proxy`, the name is known, the device is
allowed, the method and headers are allowed) and either refuses it with an
error answer or returns the exact HTTP request to make: the upstream's host
and port come from the configuration alone, the path is the configured base
path plus the device's path (no `..`, no `//`), the credentials are added
here. `answer_ok` / `answer_error` build the response payloads.
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.calls import DEFAULT_TIMEOUT, MAX_BODY, METHODS
from twelvefactor_agent.protocol.envelope import ProtocolError
from twelvefactor_agent.protocol.names import HEADER_NAME_RE, PATH_RE, SERVICE_RE
from twelvefactor_agent.protocol.topics import sol_down

from twelvefactor_services.solution.proxyconfig import ProxyConfig, Upstream

MAX_REQUEST = 1024 * 1024
MAX_CORRELATION = 64
# Headers a device may set; everything else (Authorization, Cookie, Host...) is
# the service's business.
DEVICE_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "range",
    }
)
# Headers passed back to the device; nothing that names the upstream (Location),
# sets state (Set-Cookie) or could echo credentials.
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "content-range",
        "etag",
        "last-modified",
        "cache-control",
        "expires",
        "date",
        "retry-after",
    }
)


@dataclass(frozen=True)
class Refused:
    """A request answered at once, with an error (None: no answer is possible)."""

    error: str
    message: str
    reply: tuple[str, bytes] | None  # (response topic, correlation data)


@dataclass(frozen=True)
class Plan:
    """One HTTP request to make, and where to send its answer."""

    upstream: Upstream
    method: str
    target: str  # path and query, as sent on the request line
    headers: dict[str, str]
    body: bytes
    timeout: float
    reply: tuple[str, bytes]
    device: str


def response_topic(device: str) -> str:
    return sol_down(device, "proxy")


def _bad(reply: tuple[str, bytes], message: str) -> Refused:
    return Refused("bad_request", message, reply)


def _safe_path(path: str) -> bool:
    if not PATH_RE.fullmatch(path) or "//" in path:
        return False
    for segment in path.split("/"):
        decoded = urllib.parse.unquote(segment)
        if decoded in (".", "..") or any(c in decoded for c in "/\\;%"):
            # ";" starts a path parameter ("..;" is ".." to Tomcat and Spring); a "%"
            # left after one decoding is "%25": an upstream that decodes twice would
            # see what this check never saw.
            return False
    return True


def plan(
    config: ProxyConfig,
    device: str,
    payload: bytes,
    reply_topic: str | None,
    correlation: bytes | None,
    expiry: float | None = None,
) -> Plan | Refused:
    """Check one proxy request; what to call, or the error to answer (never raises)."""
    if reply_topic != response_topic(device):
        return Refused("bad_request", f"response topic must be {response_topic(device)}", None)
    if not isinstance(correlation, bytes) or not 1 <= len(correlation) <= MAX_CORRELATION:
        return Refused("bad_request", "correlation data of 1..64 bytes is required", None)
    reply = (reply_topic, correlation)
    if len(payload) > MAX_REQUEST:
        return Refused("too_large", f"request is over {MAX_REQUEST} bytes", reply)
    try:
        doc = envelope.parse(payload, max_bytes=MAX_REQUEST)
    except ProtocolError as exc:
        return _bad(reply, f"not a v1 request object: {exc}")
    name = doc.get("service")
    if not isinstance(name, str) or not SERVICE_RE.fullmatch(name):
        return _bad(reply, "service must match [a-z0-9][a-z0-9_-]{0,62}")
    upstream = config.services.get(name)
    if upstream is None:
        return Refused("unknown_service", f"no service named {name!r}", reply)
    if not config.allowed(upstream, device):
        return Refused("not_allowed", f"{device} may not call {name}", reply)
    method = doc.get("method", "GET")
    if method not in METHODS:
        return _bad(reply, f"method must be one of {', '.join(METHODS)}")
    if method not in upstream.methods:
        return Refused("not_allowed", f"{method} is not allowed on {name}", reply)
    path = doc.get("path", "/")
    if not isinstance(path, str) or len(path) > 2048 or not _safe_path(path):
        return _bad(reply, "path must be an absolute URL path without '.', '..' or '//'")
    query = _query(doc.get("query", {}))
    if query is None:
        return _bad(reply, "query must be an object of strings or lists of strings")
    device_headers = doc.get("headers", {})
    if not isinstance(device_headers, dict) or len(device_headers) > 32:
        return _bad(reply, "headers must be an object")
    headers: dict[str, str] = {}
    for h, v in device_headers.items():
        if not HEADER_NAME_RE.fullmatch(h) or h.lower() not in DEVICE_HEADERS:
            return _bad(reply, f"header {h[:64]!r} may not be set by a device")
        if not isinstance(v, str) or any(c in v for c in "\r\n\x00") or len(v) > 1024:
            return _bad(reply, f"header {h} must be one line of text")
        headers[h.lower()] = v
    encoded = doc.get("body", "")
    if not isinstance(encoded, str):
        return _bad(reply, "body must be base64")
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return _bad(reply, "body must be base64")
    if len(body) > MAX_BODY:
        return Refused("too_large", f"body is over {MAX_BODY} bytes", reply)
    wanted = doc.get("timeout", DEFAULT_TIMEOUT)
    if type(wanted) not in (int, float) or not math.isfinite(wanted) or wanted <= 0:
        return _bad(reply, "timeout must be a positive number of seconds")
    timeout = min(upstream.timeout, float(wanted))
    if expiry is not None:
        timeout = min(timeout, max(0.1, expiry))
    # Credentials last: they override anything of the same name.
    for h, v in upstream.headers.items():
        headers = {k: val for k, val in headers.items() if k != h.lower()}
        headers[h] = v
    pairs = [(k, v) for k, vs in query.items() for v in vs if k not in upstream.query]
    pairs += list(upstream.query.items())
    target = upstream.base_path + path
    if pairs:
        target += "?" + urllib.parse.urlencode(pairs)
    return Plan(upstream, method, target, headers, body, timeout, reply, device)


def _query(value: object) -> dict[str, list[str]] | None:
    if not isinstance(value, dict) or len(value) > 64:
        return None
    out: dict[str, list[str]] = {}
    for k, raw in value.items():
        values = raw if isinstance(raw, list) else [raw]
        if not values or not all(isinstance(v, str) for v in values) or len(values) > 64:
            return None
        out[k] = values
    return out


def answer_ok(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    kept = {k.lower(): v for k, v in headers if k.lower() in RESPONSE_HEADERS}
    doc: dict[str, Any] = {
        "v": 1,
        "ok": True,
        "status": status,
        "headers": kept,
        "body": base64.b64encode(body).decode("ascii"),
    }
    return envelope.dumps(doc)


def answer_error(error: str, message: str, status: int | None = None) -> bytes:
    doc: dict[str, Any] = {"v": 1, "ok": False, "error": error, "message": message}
    if status is not None:
        doc["status"] = status
    return envelope.dumps(doc)
