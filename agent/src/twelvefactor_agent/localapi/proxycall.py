"""Calls to third-party services by name, through the solution service. Pure.

An application asks the agent over the local socket to call a service by
name ("weather"). The agent holds no URL and no key: it publishes the request
on `sol/<id>/up/proxy` (MQTT 5, response topic `sol/<id>/down/proxy`,
correlation data, message expiry = the call's timeout) and the solution
service, which alone maps the name to an endpoint and credentials, answers on
the response topic. This module checks the application's request, builds the
MQTT request payload and turns the service's answer into the application's
answer (docs/protocol.md, "Calls by service name").
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, NamedTuple

from twelvefactor_agent.protocol import envelope
from twelvefactor_agent.protocol.calls import (
    DEFAULT_TIMEOUT,
    ERRORS,
    MAX_BODY,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_PATH,
    MAX_QUERY,
    MAX_TIMEOUT,
    METHODS,
)
from twelvefactor_agent.protocol.names import HEADER_NAME_RE, PATH_RE, SERVICE_RE

MAX_QUERY_TEXT = 4096


class CallRefused(ValueError):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


class Call(NamedTuple):
    service: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    timeout: float

    def request_payload(self) -> bytes:
        """The MQTT request body (the timeout travels too: the service waits no longer)."""
        doc: dict[str, Any] = {
            "v": 1,
            "service": self.service,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": base64.b64encode(self.body).decode("ascii"),
            "timeout": self.timeout,
        }
        return envelope.dumps(doc)


def _text(value: object) -> bool:
    return isinstance(value, str) and not any(c in value for c in "\r\n\x00")


def parse_call(doc: dict[str, Any]) -> Call:
    """The `call` request of the local API (already a JSON object), or CallRefused."""
    service = doc.get("service")
    if not isinstance(service, str) or not SERVICE_RE.fullmatch(service):
        raise CallRefused("bad_request", "service must match [a-z0-9][a-z0-9_-]{0,62}")
    method = doc.get("method", "GET")
    if method not in METHODS:
        raise CallRefused("bad_request", f"method must be one of {', '.join(METHODS)}")
    path = doc.get("path", "/")
    if not isinstance(path, str) or len(path) > MAX_PATH or not PATH_RE.fullmatch(path):
        raise CallRefused("bad_request", "path must start with / and hold only URL path characters")
    query = _query(doc.get("query"))
    headers = _headers(doc.get("headers"))
    encoded = doc.get("body", "")
    if not isinstance(encoded, str):
        raise CallRefused("bad_request", "body must be a base64 string")
    if len(encoded) // 4 * 3 - 2 > MAX_BODY:
        raise CallRefused("too_large", f"body is over {MAX_BODY} bytes")
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CallRefused("bad_request", "body is not valid base64") from None
    if len(body) > MAX_BODY:
        raise CallRefused("too_large", f"body is over {MAX_BODY} bytes")
    timeout = doc.get("timeout", DEFAULT_TIMEOUT)
    if (
        type(timeout) not in (int, float)
        or not math.isfinite(timeout)
        or not 0.1 <= timeout <= MAX_TIMEOUT
    ):
        raise CallRefused(
            "bad_request", f"timeout must be a number of seconds in 0.1..{MAX_TIMEOUT:g}"
        )
    return Call(service, method, path, query, headers, body, float(timeout))


def _query(value: object) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_QUERY:
        raise CallRefused("bad_request", f"query must be an object of at most {MAX_QUERY} names")
    out: dict[str, list[str]] = {}
    size = 0
    for name, raw in value.items():
        values = raw if isinstance(raw, list) else [raw]
        if not _text(name) or not name or not all(_text(v) for v in values) or not values:
            raise CallRefused("bad_request", "query values must be strings or lists of strings")
        out[name] = [str(v) for v in values]
        size += len(name) + sum(len(v) for v in out[name])
    if size > MAX_QUERY_TEXT:
        raise CallRefused("bad_request", f"query is longer than {MAX_QUERY_TEXT} characters")
    return out


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise CallRefused(
            "bad_request", f"headers must be an object of at most {MAX_HEADERS} names"
        )
    out: dict[str, str] = {}
    for name, v in value.items():
        if not HEADER_NAME_RE.fullmatch(name):
            raise CallRefused("bad_request", f"{name[:64]!r} is not a header name")
        if not _text(v) or len(v) > MAX_HEADER_VALUE:
            raise CallRefused("bad_request", f"header {name} must be one line of text")
        out[name] = v
    return out


def parse_answer(raw: bytes) -> dict[str, object]:
    """The service's response payload as the local API's answer (never raises).

    Only the documented fields are passed on; a malformed payload becomes an
    `unavailable` error rather than reaching the application half-checked."""
    try:
        doc = envelope.parse(raw)
    except envelope.ProtocolError as exc:
        return _broken(str(exc))
    status = doc.get("status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        return _broken("bad status")
    if doc.get("ok") is True:
        headers, body = doc.get("headers", {}), doc.get("body", "")
        if status is None:
            return _broken("no status")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            return _broken("bad headers")
        if not isinstance(body, str):
            return _broken("bad body")
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return _broken("body is not base64")
        return {"ok": True, "status": status, "headers": headers, "body": body}
    error, message = doc.get("error"), doc.get("message")
    if doc.get("ok") is not False or error not in ERRORS:
        return _broken("unknown error code")
    answer: dict[str, object] = {
        "ok": False,
        "error": error,
        "message": message[:1000] if isinstance(message, str) else str(error),
    }
    if status is not None:
        answer["status"] = status
    return answer


def _broken(why: str) -> dict[str, object]:
    return {
        "ok": False,
        "error": "unavailable",
        "message": f"malformed answer from the solution service ({why})",
    }


def refusal(error: str, message: str) -> dict[str, object]:
    return {"ok": False, "error": error, "message": message}
