"""The proxy's configuration file (TOML): service names, endpoints, credentials, allowlists.

    [groups]                       # device groups the allowlists may name
    field = ["dev-001", "dev-002"]

    [services.weather]
    url = "https://api.example.com/v1"        # base URL, http or https
    headers = { "X-Api-Key" = "..." }          # injected on every call (credentials)
    query = { appid = "..." }                  # injected query parameters (credentials)
    methods = ["GET"]                          # default ["GET"]
    timeout = 10                               # seconds, default 10, at most 300
    max_response_bytes = 262144                # default 256 KiB, at most 1 MiB
    devices = ["dev-003"]                      # allowed devices
    groups = ["field"]                         # allowed groups

A device may call a service only if it is listed in `devices` or is a member
of a group listed in `groups`. The file holds secrets: keep it readable by
the service alone. `parse` is pure; `load` reads the file.
"""

from __future__ import annotations

import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_agent.protocol.calls import MAX_TIMEOUT, METHODS
from twelvefactor_agent.protocol.names import DEVICE_ID_RE, HEADER_NAME_RE, SERVICE_RE

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE = 256 * 1024
MAX_RESPONSE_LIMIT = 1024 * 1024
SERVICE_KEYS = frozenset(
    {"url", "headers", "query", "methods", "timeout", "max_response_bytes", "devices", "groups"}
)


class ProxyConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Upstream:
    name: str
    scheme: str  # http | https
    host: str
    port: int
    base_path: str  # without a trailing slash ("" for the root)
    headers: dict[str, str]
    query: dict[str, str]
    methods: frozenset[str]
    timeout: float
    max_response_bytes: int
    devices: frozenset[str]
    groups: frozenset[str]

    def secrets(self) -> list[str]:
        """The injected values (tests check they never reach the device)."""
        return [*self.headers.values(), *self.query.values()]


@dataclass(frozen=True)
class ProxyConfig:
    services: dict[str, Upstream]
    groups: dict[str, frozenset[str]]

    def allowed(self, upstream: Upstream, device: str) -> bool:
        if device in upstream.devices:
            return True
        return any(device in self.groups.get(g, frozenset()) for g in upstream.groups)


EMPTY = ProxyConfig({}, {})


def _strings(value: object, key: str, pattern: re.Pattern[str], problems: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and pattern.fullmatch(v) for v in value
    ):
        problems.append(f"proxy: {key}: expected a list of names matching {pattern.pattern}")
        return []
    return list(value)


def _table(value: object, key: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\r" not in v and "\n" not in v
        for k, v in value.items()
    ):
        problems.append(f"proxy: {key}: expected a table of one-line strings")
        return {}
    return dict(value)


def _service(name: str, raw: object, groups: dict[str, Any], problems: list[str]) -> Upstream:
    where = f"services.{name}"
    if not SERVICE_RE.fullmatch(name):
        problems.append(f"proxy: {where}: a service name matches {SERVICE_RE.pattern}")
    if not isinstance(raw, dict):
        problems.append(f"proxy: {where}: expected a table")
        raw = {}
    for key in raw:
        if key not in SERVICE_KEYS:
            problems.append(f"proxy: {where}.{key}: unknown key")
    url = raw.get("url")
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
    ):
        problems.append(f"proxy: {where}.url: expected an http(s) URL without query or user")
        scheme, host, port, base = "http", "invalid", 80, ""
    else:
        scheme, host = parts.scheme, parts.hostname
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            problems.append(f"proxy: {where}.url: bad port")
            port = 80
        base = parts.path.rstrip("/")
    headers = _table(raw.get("headers", {}), f"{where}.headers", problems)
    for h in headers:
        if not HEADER_NAME_RE.fullmatch(h):
            problems.append(f"proxy: {where}.headers: {h!r} is not a header name")
    query = _table(raw.get("query", {}), f"{where}.query", problems)
    methods = raw.get("methods", ["GET"])
    if not isinstance(methods, list) or not methods or not all(m in METHODS for m in methods):
        problems.append(f"proxy: {where}.methods: a list of {', '.join(METHODS)}")
        methods = []
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if type(timeout) not in (int, float) or not (
        math.isfinite(timeout) and 0.1 <= timeout <= MAX_TIMEOUT
    ):
        problems.append(f"proxy: {where}.timeout: seconds in 0.1..{MAX_TIMEOUT:g}")
        timeout = DEFAULT_TIMEOUT
    size = raw.get("max_response_bytes", DEFAULT_MAX_RESPONSE)
    if type(size) is not int or not 0 <= size <= MAX_RESPONSE_LIMIT:
        problems.append(f"proxy: {where}.max_response_bytes: 0..{MAX_RESPONSE_LIMIT}")
        size = DEFAULT_MAX_RESPONSE
    devices = _strings(raw.get("devices", []), f"{where}.devices", DEVICE_ID_RE, problems)
    allowed_groups = _strings(raw.get("groups", []), f"{where}.groups", SERVICE_RE, problems)
    for g in allowed_groups:
        if g not in groups:
            problems.append(f"proxy: {where}.groups: no group {g!r} in [groups]")
    return Upstream(
        name=name,
        scheme=scheme,
        host=host,
        port=port,
        base_path=base,
        headers=headers,
        query=query,
        methods=frozenset(methods),
        timeout=float(timeout),
        max_response_bytes=size,
        devices=frozenset(devices),
        groups=frozenset(allowed_groups),
    )


def parse(doc: dict[str, Any]) -> ProxyConfig:
    problems: list[str] = []
    for key in doc:
        if key not in ("groups", "services"):
            problems.append(f"proxy: {key}: unknown key (expected [groups] and [services.NAME])")
    raw_groups = doc.get("groups", {})
    groups: dict[str, frozenset[str]] = {}
    if not isinstance(raw_groups, dict):
        problems.append("proxy: groups: expected a table")
        raw_groups = {}
    for name, members in raw_groups.items():
        if not SERVICE_RE.fullmatch(name):
            problems.append(f"proxy: groups.{name}: a group name matches {SERVICE_RE.pattern}")
        groups[name] = frozenset(_strings(members, f"groups.{name}", DEVICE_ID_RE, problems))
    raw_services = doc.get("services", {})
    if not isinstance(raw_services, dict):
        problems.append("proxy: services: expected a table")
        raw_services = {}
    services = {n: _service(n, s, raw_groups, problems) for n, s in raw_services.items()}
    if problems:
        raise ProxyConfigError(problems)
    return ProxyConfig(services, groups)


def load(path: Path) -> ProxyConfig:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProxyConfigError([f"proxy: cannot read {path}: {exc}"]) from exc
    return parse(doc)
