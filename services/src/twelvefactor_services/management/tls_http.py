"""An HTTPS server whose TLS handshake runs in the request's thread.

`http.server` with `wrap_socket(server_side=True)` would shake hands in the
accept loop, so one client that stalls its handshake would hold up every
other. Here the listening loop only accepts; each request's thread does the
handshake with a timeout. The artifact server and the operator API use it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANDSHAKE_TIMEOUT = 30.0
log = logging.getLogger("twelvefactor.https")


class TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext  # set by the subclass before serving

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # refused handshakes and clients that go away are routine: one line, no traceback
        log.warning("%s: %s", client_address[0], sys.exc_info()[1])


class TlsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        sock = self.request
        assert isinstance(sock, ssl.SSLSocket)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        # The headers and the body go out in two writes: with Nagle's algorithm the body
        # waits for the client's delayed ACK of the headers, 40 ms on every answer
        # (bench/api_latency.py: 48 ms per GET on an idle machine, 3 ms without).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.do_handshake()  # raises on a client the context refuses
        super().setup()
