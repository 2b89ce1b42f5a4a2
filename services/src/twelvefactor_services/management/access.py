"""Who may send what to the operator API: Host, Origin, Content-Type and role checks.

Pure functions over header values, so each rule is tested without a server.
Credentials are bearer tokens only (no cookies, no HTTP Basic), which a browser
never attaches by itself: another site cannot make a write in an operator's
name. On top of that, a request whose Host is not one of the server's names
(DNS rebinding) or whose Origin is another site is refused, and a write's body
must be `application/json` (an `application/octet-stream` upload for
artifacts), which a cross-site form can never send without a CORS preflight
that this server never grants.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")


class Refused(Exception):
    """The request is refused before any work; ``status`` and ``error`` go to the client."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Site:
    """The names this server answers to and its port (for the Host and Origin checks)."""

    names: frozenset[str]
    port: int

    @classmethod
    def of(cls, names: Iterable[str], port: int) -> Site:
        return cls(frozenset(_canonical(n) for n in names), port)

    def host_ok(self, host: str | None) -> bool:
        if host is None:
            return False
        m = _HOST_RE.fullmatch(host.strip())
        if m is None:
            return False
        port = m.group(2)
        if port is not None and int(port) != self.port:
            return False
        return _canonical(m.group(1)) in self.names

    def origin_ok(self, origin: str) -> bool:
        scheme, sep, rest = origin.partition("://")
        if scheme.lower() != "https" or not sep or "/" in rest:
            return False
        m = _HOST_RE.fullmatch(rest)
        if m is None:
            return False
        port = int(m.group(2)) if m.group(2) else 443
        return port == self.port and _canonical(m.group(1)) in self.names


def _canonical(name: str) -> str:
    bare = name.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare


def certificate_names(cert: Path) -> list[str]:
    """The DNS names and IP addresses the server certificate is valid for."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    try:
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def check_request(
    site: Site,
    method: str,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    has_body: bool,
    upload: bool = False,
) -> None:
    """Raise Refused unless Host, Origin and (for a write with a body) Content-Type pass."""
    if not site.host_ok(host):
        raise Refused(
            421, "wrong_host", f"Host {host!r} is not a name of this server (see --api-name)"
        )
    if origin is not None and not site.origin_ok(origin):
        raise Refused(403, "cross_origin", f"requests from origin {origin!r} are not accepted")
    if method in WRITE_METHODS and has_body:
        want = "application/octet-stream" if upload else "application/json"
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != want:
            raise Refused(415, "unsupported_media_type", f"the body must be {want}")


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
