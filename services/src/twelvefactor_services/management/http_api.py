"""Read-only HTTP JSON API over the registry (http.server, bound to 127.0.0.1 by default).

GET /devices, /devices/<id>, /devices/<id>/history, /healthz.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from twelvefactor_services.management import registry

log = logging.getLogger(__name__)
DEVICE_PATH = re.compile(r"/devices/([a-z0-9][a-z0-9-]{0,62})(/history)?")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], db_path: Path, health: Callable[[], dict[str, Any]]
    ) -> None:
        self.db_path = db_path
        self.health = health
        super().__init__(address, Handler)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="http-api", daemon=True)
        t.start()
        return t


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = "twelvefactor-management"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, indent=1).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/healthz":
            h = self.server.health()
            self._send(HTTPStatus.OK if h["ok"] else HTTPStatus.SERVICE_UNAVAILABLE, h)
            return
        db = registry.connect(self.server.db_path)
        try:
            if path == "/devices":
                self._send(HTTPStatus.OK, registry.list_devices(db))
                return
            m = DEVICE_PATH.fullmatch(path)
            if m is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not_found", "path": path})
                return
            device = registry.get_device(db, m.group(1))
            if device is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "unknown_device", "id": m.group(1)})
            elif m.group(2):
                self._send(HTTPStatus.OK, registry.history(db, m.group(1)))
            else:
                self._send(HTTPStatus.OK, device)
        finally:
            db.close()
