"""HTTPS artifact server: `.swu` files to devices, mutual TLS, HTTP Range.

`GET /artifacts/<sha256>.swu` with a device client certificate (signed by the
PKI's device CA; its CN is the device id), or `.zck` for a delta's chunks
(the artifact store says which file a digest is: an artifact's `.swu`, its
delta's `.swu` or its `.zck`). A device gets a file only if an update job
addressed to it names the artifact it belongs to (`may_fetch`); otherwise,
or if the artifact does not exist, 404 with the same body, so a device learns
nothing about other devices' jobs. `Range: bytes=N-` (or `N-M`) answers 206
with `Content-Range`; several ranges (SWUpdate's delta handler) answer 206
`multipart/byteranges` (byteranges.py); no Range answers 200. After each
answer the server tells its owner how many body bytes it sent (`on_sent`; the
management service counts them per job in the registry). The TLS handshake runs
in the request's thread, so a client that stalls it holds up nobody else.
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.byteranges import ByteRange, Multipart, RangeError, parse
from twelvefactor_services.management.tls_http import TlsHandler, TlsServer

log = logging.getLogger("twelvefactor.artifacts")
SERVED_KEPT = 1000
PATH_RE = re.compile(r"/artifacts/([0-9a-f]{64})(\.swu|\.zck)")
CHUNK = 64 * 1024
IDLE_TIMEOUT = 60.0

MayFetch = Callable[[str, str], bool]  # (device id, sha256 of the file) -> allowed
Sent = Callable[[str, str, int], None]  # (device id, sha256, body bytes sent in one request)


@dataclass(frozen=True)
class Served:
    """One answered request (kept for the operator's log and for tests)."""

    device: str
    sha256: str
    status: int
    start: int  # first byte sent (0 without Range)


def server_context(cert: Path, key: Path, device_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(device_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED  # no device certificate, no connection
    return ctx


def _common_name(peer: dict[str, Any]) -> str | None:
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    return None


class _Handler(TlsHandler):
    server: ArtifactServer
    timeout = IDLE_TIMEOUT
    _sent = 0  # body bytes of the answer being sent

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _refuse(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        sock = self.request
        assert isinstance(sock, ssl.SSLSocket)
        device = _common_name(sock.getpeercert() or {})
        m = PATH_RE.fullmatch(self.path)
        if device is None or m is None:
            self._refuse(404, "not found")
            return
        sha = m.group(1)
        path = self.server.store.served(sha, m.group(2))
        if path is None or not self.server.may_fetch(device, sha):
            self.server.record(Served(device, sha, 404, 0))
            self._refuse(404, "not found")
            return
        size = path.stat().st_size
        spec = self.headers.get("Range")
        ranges = [ByteRange(0, size - 1)]
        if spec is not None:
            try:
                ranges = parse(spec, size)
            except RangeError as exc:
                self._refuse(400, str(exc))
                return
            if not ranges:
                self.server.record(Served(device, sha, 416, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        status = 200 if spec is None else 206
        self.server.record(Served(device, sha, status, ranges[0].first))
        self._sent = 0
        try:
            self._answer(path, status, ranges, size)
        finally:
            if self._sent and self.server.on_sent is not None:
                self.server.on_sent(device, sha, self._sent)

    def _answer(self, path: Path, status: int, ranges: list[ByteRange], size: int) -> None:
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        with path.open("rb") as f:
            if len(ranges) == 1:
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(ranges[0].length))
                if status == 206:
                    self.send_header("Content-Range", ranges[0].content_range(size))
                self.end_headers()
                self._send_range(f, ranges[0])
                return
            body = Multipart(secrets.token_hex(16), tuple(ranges), size)
            self.send_header("Content-Type", body.content_type)
            self.send_header("Content-Length", str(body.content_length))
            self.end_headers()
            for piece in body.pieces():
                if isinstance(piece, ByteRange):
                    self._send_range(f, piece)
                else:
                    self.wfile.write(piece)
                    self._sent += len(piece)

    def _send_range(self, f: Any, r: ByteRange) -> None:
        f.seek(r.first)
        left = r.length
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            self.wfile.write(block)
            self._sent += len(block)
            left -= len(block)


class ArtifactServer(TlsServer):
    # Several service copies serve one artifact address (the URL in every job document):
    # the kernel spreads new connections over them, and a copy that dies leaves the others
    # answering (SO_REUSEPORT: only processes of the same user may join the port).
    allow_reuse_port = True

    def __init__(
        self,
        address: tuple[str, int],
        store: ArtifactStore,
        context: ssl.SSLContext,
        may_fetch: MayFetch,
        on_sent: Sent | None = None,
    ) -> None:
        self.store = store
        self.on_sent = on_sent  # told after each answer with a body, also one cut short
        self.context = context
        self.may_fetch = may_fetch
        # The last SERVED_KEPT answers only: a device retrying for weeks must not grow it.
        self._served: deque[Served] = deque(maxlen=SERVED_KEPT)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def served(self) -> list[Served]:
        """The answered requests kept, oldest first."""
        with self._lock:
            return list(self._served)

    def record(self, served: Served) -> None:
        with self._lock:
            self._served.append(served)
        log.info(
            "%s %s from %s (%d)", served.status, served.sha256[:12], served.device, served.start
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="artifacts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(10)
