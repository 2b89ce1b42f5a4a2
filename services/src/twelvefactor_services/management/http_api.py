"""HTTP JSON API over the registry (http.server, bound to 127.0.0.1 by default).

GET /devices, /devices/<id>, /devices/<id>/history, /devices/<id>/config, /groups,
/groups/<name>, /artifacts, /jobs, /jobs/<id>, /healthz; POST /jobs;
PUT /devices/<id>/config, /groups/<name>/config; DELETE /devices/<id>/config;
POST /groups/<name>/members; DELETE /groups/<name>/members/<id>. There is no
authentication: bind it to loopback or put it behind a proxy that authenticates operators.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from twelvefactor_agent.protocol.names import DEVICE_ID_RE, FLEET_GROUP_RE, JOB_ID_RE

from twelvefactor_services.management import jobstore, registry
from twelvefactor_services.management.artifacts import ArtifactStore
from twelvefactor_services.management.configlogic import (
    OverlayError,
    check_device,
    check_group,
    check_overlay,
)

log = logging.getLogger(__name__)
_DEVICE, _GROUP, _JOB = DEVICE_ID_RE.pattern, FLEET_GROUP_RE.pattern, JOB_ID_RE.pattern
DEVICE_PATH = re.compile(rf"/devices/({_DEVICE})(/history|/config)?")
GROUP_PATH = re.compile(rf"/groups/({_GROUP})(/config|/members)?")
MEMBER_PATH = re.compile(rf"/groups/({_GROUP})/members/({_DEVICE})")
JOB_PATH = re.compile(rf"/jobs/({_JOB})")
MAX_BODY = 64 * 1024
HISTORY_PAGE = 100  # online changes per page of /devices/<id>/history


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        db_path: Path,
        health: Callable[[], dict[str, Any]],
        changed: Callable[[], None] = lambda: None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.db_path = db_path
        self.artifacts = artifacts or ArtifactStore(db_path.parent / "artifacts")
        self.health = health
        self.changed = changed  # a desired configuration changed: publish soon
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

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _history_page(self) -> dict[str, int] | None:
        """`?limit=N` (1..1000, default 100) and `?before=ID`; None after a 400 was sent."""
        query = urllib.parse.parse_qs(self.path.partition("?")[2], max_num_fields=4)
        page = {"limit": HISTORY_PAGE}
        for name, low, high in (("limit", 1, registry.HISTORY_KEPT), ("before", 1, 2**62)):
            values = query.get(name)
            if values is None:
                continue
            value = values[-1]
            if not value.isdigit() or not low <= int(value) <= high:
                self._send(
                    HTTPStatus.BAD_REQUEST,
                    {
                        "error": "bad_query",
                        "message": f"{name} must be an integer in {low}..{high}",
                    },
                )
                return None
            page[name] = int(value)
        return page

    def _body(self) -> Any:
        """The request's JSON body; OverlayError if there is none or it is not JSON."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise OverlayError(["a JSON body with Content-Length is required"]) from None
        if not 0 <= length <= MAX_BODY:
            raise OverlayError([f"the body must be at most {MAX_BODY} bytes"])
        try:
            return json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise OverlayError(["the body is not JSON"]) from None

    def _change(self, work: Callable[[registry.Registry], Any]) -> None:
        """Run a registry change; 200 with its result, 400 with the problems, 404 if unknown."""
        try:
            reg = registry.Registry(self.server.db_path)
        except Exception:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "registry_unavailable"})
            raise
        try:
            result = work(reg)
        except OverlayError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "invalid", "problems": exc.problems})
            return
        except KeyError as exc:
            self._send(HTTPStatus.NOT_FOUND, {"error": "unknown_group", "name": exc.args[0]})
            return
        finally:
            reg.close()
        self.server.changed()
        self._send(HTTPStatus.OK, result)

    def do_PUT(self) -> None:
        path = self._path()
        m = DEVICE_PATH.fullmatch(path)
        if m is not None and m.group(2) == "/config":
            device = m.group(1)

            def set_device(reg: registry.Registry) -> Any:
                overlay = check_overlay(self._body())
                reg.set_device_config(check_device(device), overlay, time.time())
                return registry.device_config(reg.db, device)

            self._change(set_device)
            return
        g = GROUP_PATH.fullmatch(path)
        if g is not None and g.group(2) == "/config":
            name = g.group(1)

            def set_group(reg: registry.Registry) -> Any:
                overlay = check_overlay(self._body())
                versions = reg.set_group_config(check_group(name), overlay, time.time())
                return {"name": name, "config": overlay, "versions": versions}

            self._change(set_group)
            return
        self._send(HTTPStatus.NOT_FOUND, {"error": "not_found", "path": path})

    def _create_job(self) -> None:
        try:
            body = self._body()
        except OverlayError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "invalid", "problems": exc.problems})
            return
        ok = isinstance(body, dict) and isinstance(body.get("artifact"), str)
        device = body.get("device") if isinstance(body, dict) else None
        group = body.get("group") if isinstance(body, dict) else None
        if not ok or not (isinstance(device, str) or isinstance(group, str)):
            problem = 'the body must be {"artifact": SHA256, "device": ID} or {..., "group": NAME}'
            self._send(HTTPStatus.BAD_REQUEST, {"error": "invalid", "problems": [problem]})
            return
        try:
            device = check_device(device) if isinstance(device, str) else None
            group = check_group(group) if isinstance(group, str) else None
        except OverlayError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "invalid", "problems": exc.problems})
            return
        db = jobstore.connect(self.server.db_path)
        try:
            job = jobstore.create_job(
                db,
                self.server.artifacts,
                body["artifact"],
                device=device,
                group=group,
                now=time.time(),
            )
        except jobstore.JobError as exc:
            self._send(HTTPStatus.CONFLICT, {"error": "refused", "problems": [str(exc)]})
            return
        finally:
            db.close()
        self.server.changed()
        self._send(HTTPStatus.CREATED, job)

    def do_POST(self) -> None:
        path = self._path()
        if path == "/jobs":
            self._create_job()
            return
        g = GROUP_PATH.fullmatch(path)
        if g is None or g.group(2) != "/members":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not_found", "path": path})
            return
        name = g.group(1)

        def add(reg: registry.Registry) -> Any:
            body = self._body()
            devices = body.get("devices") if isinstance(body, dict) else None
            if isinstance(body, dict) and isinstance(body.get("device"), str):
                devices = [body["device"]]
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise OverlayError(['the body must be {"device": ID} or {"devices": [ID, ...]}'])
            for d in devices:
                check_device(d)
            return {"name": name, "versions": reg.add_members(name, devices, time.time())}

        self._change(add)

    def do_DELETE(self) -> None:
        path = self._path()
        mm = MEMBER_PATH.fullmatch(path)
        if mm is not None:
            name, device = mm.group(1), mm.group(2)
            self._change(
                lambda reg: {
                    "name": name,
                    "versions": reg.remove_members(name, [device], time.time()),
                }
            )
            return
        m = DEVICE_PATH.fullmatch(path)
        if m is not None and m.group(2) == "/config":
            device = m.group(1)
            self._change(
                lambda reg: {
                    "device": device,
                    "version": reg.set_device_config(device, None, time.time()),
                }
            )
            return
        self._send(HTTPStatus.NOT_FOUND, {"error": "not_found", "path": path})

    def do_GET(self) -> None:
        path = self._path()
        if path == "/healthz":
            h = self.server.health()
            self._send(HTTPStatus.OK if h["ok"] else HTTPStatus.SERVICE_UNAVAILABLE, h)
            return
        if path == "/artifacts":
            self._send(HTTPStatus.OK, [a.to_json() for a in self.server.artifacts.list()])
            return
        db = jobstore.connect(self.server.db_path)
        try:
            if path == "/jobs":
                self._send(HTTPStatus.OK, jobstore.list_jobs(db))
                return
            j = JOB_PATH.fullmatch(path)
            if j is not None:
                job = jobstore.get_job(db, j.group(1))
                if job is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": "unknown_job", "id": j.group(1)})
                else:
                    self._send(HTTPStatus.OK, job)
                return
            if path == "/devices":
                self._send(HTTPStatus.OK, registry.list_devices(db))
                return
            if path == "/groups":
                self._send(HTTPStatus.OK, registry.list_groups(db))
                return
            g = GROUP_PATH.fullmatch(path)
            if g is not None and g.group(2) is None:
                group = registry.group_config(db, g.group(1))
                if group is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": "unknown_group", "name": g.group(1)})
                else:
                    self._send(HTTPStatus.OK, group)
                return
            m = DEVICE_PATH.fullmatch(path)
            if m is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not_found", "path": path})
                return
            if m.group(2) == "/config":
                cfg = registry.device_config(db, m.group(1))
                if cfg is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": "no_config", "id": m.group(1)})
                else:
                    self._send(HTTPStatus.OK, cfg)
                return
            device = registry.get_device(db, m.group(1))
            if device is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "unknown_device", "id": m.group(1)})
            elif m.group(2):
                page = self._history_page()
                if page is None:
                    return
                self._send(HTTPStatus.OK, registry.history(db, m.group(1), **page))
            else:
                self._send(HTTPStatus.OK, device)
        finally:
            db.close()
