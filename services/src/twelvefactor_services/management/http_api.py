"""The operator API: HTTPS, bearer tokens, roles, and an audit log of every change.

Each route names the least role it needs (viewer < operator < admin; see
operators.py) and is listed in ROUTES, which docs/operator-api.md and the
route test read. Every request first passes the Host, Origin and Content-Type
checks (access.py); every write, answered or refused, is recorded in the
audit log with who made it (but POST /config/check, a dry run that changes
nothing). `GET /healthz` and `POST /login` need no token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from twelvefactor_agent.protocol.names import DEVICE_ID_RE, FLEET_GROUP_RE, JOB_ID_RE

from twelvefactor_services.management import (
    devicelist,
    jobstore,
    operators,
    registry,
    rolloutstore,
)
from twelvefactor_services.management.access import Refused, Site, bearer, check_request
from twelvefactor_services.management.artifacts import ArtifactError, ArtifactStore
from twelvefactor_services.management.configlogic import (
    OverlayError,
    check_device,
    check_group,
    check_overlay,
)
from twelvefactor_services.management.logic import OVERDUE_AFTER
from twelvefactor_services.management.operators import OperatorError, Principal
from twelvefactor_services.management.rollouts import ENDED, RolloutError, parse_spec
from twelvefactor_services.management.store import Db
from twelvefactor_services.management.store import Error as StoreError
from twelvefactor_services.management.tls_http import TlsHandler, TlsServer

log = logging.getLogger(__name__)
_DEVICE, _GROUP, _JOB = DEVICE_ID_RE.pattern, FLEET_GROUP_RE.pattern, JOB_ID_RE.pattern
_OPERATOR = operators.NAME_RE.pattern
_ROLLOUT = r"r-[0-9a-f]{1,12}"
MAX_BODY = 64 * 1024
T = TypeVar("T")
MAX_ARTIFACT = 4 * 1024**3  # default upload limit (serve --max-artifact-bytes)
HISTORY_PAGE = 100  # online changes per page of /devices/<id>/history
IDLE_TIMEOUT = 60.0
LOGIN_FAILURES = 5  # wrong passwords for one name within LOGIN_WINDOW lock it for a while
LOGIN_WINDOW = 300.0
PREFIX_MIN = 4  # an artifact or job may be named by a unique prefix this long, as git does
EVENTS_WAIT = 25.0  # GET /events waits this long for something new before answering empty
EVENTS_POLL = 0.5  # how often a waiting GET /events looks again
# The web console (console/): static files for the browser, a client of this same API.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
CONSOLE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_CONSOLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,99})*")


class Problem(Exception):
    """An answer other than success: HTTP status, an error word and what was wrong."""

    def __init__(self, status: int, error: str, problems: list[str] | str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.problems = [problems] if isinstance(problems, str) else problems


@dataclass
class Request:
    """What a route's handler gets: the server, the caller, the path match, query and body."""

    server: ApiServer
    who: Principal | None
    match: re.Match[str]
    query: dict[str, list[str]]
    handler: Handler
    audit_detail: Any = None  # what the audit log records of this request
    _body: Any = field(default=None, repr=False)

    def body(self) -> Any:
        """The JSON body (read once); Problem 400 if missing or not JSON."""
        if self._body is None:
            data = self.handler.read_body(MAX_BODY)
            try:
                self._body = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise Problem(400, "invalid", "the body is not JSON") from None
            self.audit_detail = _redacted(self._body)
        return self._body

    def query_int(self, name: str, low: int, high: int, default: int | None) -> int | None:
        values = self.query.get(name)
        if values is None:
            return default
        value = values[-1]
        if not value.isdigit() or not low <= int(value) <= high:
            raise Problem(400, "bad_query", f"{name} must be an integer in {low}..{high}")
        return int(value)


def _redacted(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: ("(not recorded)" if k == "password" else v) for k, v in body.items()}
    return body


Answer = tuple[int, Any]
Work = Callable[[Request], Answer]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # a regular expression over the path (documented form in `doc`)
    role: str | None  # least role; None: no token needed
    work: Work
    doc: str
    upload: bool = False  # the body is a .swu (application/octet-stream)
    audited: bool = True  # False: a check that changes nothing (POST /config/check)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.path)


# -- handlers ------------------------------------------------------------------


def _read(req: Request, work: Callable[[Any], Any]) -> Any:
    return _with_db(req.server.db, work)


def _change(req: Request, work: Callable[[registry.Registry], Any]) -> Answer:
    try:
        result = _with_db(req.server.db, lambda db: work(registry.Registry(db)))
    except OverlayError as exc:
        raise Problem(400, "invalid", exc.problems) from None
    except KeyError as exc:
        raise Problem(404, "unknown_group", f"no group {exc.args[0]!r}") from None
    req.server.changed()
    return 200, result


def healthz(req: Request) -> Answer:
    h = req.server.health()
    return (200 if h["ok"] else 503), h


def login(req: Request) -> Answer:
    body = req.body()
    name, password = (body.get("name"), body.get("password")) if isinstance(body, dict) else (0, 0)
    if not isinstance(name, str) or not isinstance(password, str):
        raise Problem(400, "invalid", 'the body must be {"name": NAME, "password": PASSWORD}')
    req.audit_detail = {"name": name}
    server = req.server
    if not server.login_allowed(name):
        raise Problem(429, "too_many_attempts", f"too many wrong passwords for {name!r}; wait")
    token = _read(req, lambda db: operators.login(db, name, password, time.time()))
    if token is None:
        server.login_failed(name)
        raise Problem(401, "unauthorized", "wrong name or password")
    req.audit_detail = {"name": name, "token": token["id"]}
    return 201, token


def openapi(req: Request) -> Answer:
    """The API's OpenAPI document (checked against ROUTES by the tests)."""
    text = resources.files("twelvefactor_services.management").joinpath("openapi.json")
    return 200, json.loads(text.read_text(encoding="utf-8"))


def whoami(req: Request) -> Answer:
    assert req.who is not None
    return 200, {"name": req.who.name, "role": req.who.role, "token": req.who.token}


def list_devices(req: Request) -> Answer:
    """A page of devices in id order (`limit`, `after` = the last id before), filtered by
    `q` (part of the id), `group`, `tag`, `version` and `presence`."""

    def word(name: str) -> str | None:
        return req.query[name][-1] if name in req.query else None

    limit = req.query_int("limit", 1, devicelist.PAGE_MAX, devicelist.PAGE)
    try:
        query = devicelist.DeviceQuery(
            limit=limit or devicelist.PAGE,
            after=word("after"),
            q=word("q"),
            group=word("group"),
            tag=word("tag"),
            version=word("version"),
            presence=word("presence"),
        )
    except devicelist.QueryError as exc:
        raise Problem(400, "bad_query", str(exc)) from None
    overdue_after = req.server.overdue_after
    return 200, _read(req, lambda db: devicelist.list_devices(db, query, overdue_after))


def fleet_counts(req: Request) -> Answer:
    return 200, _read(req, lambda db: devicelist.fleet(db, req.server.overdue_after))


def _device(req: Request) -> str:
    return req.match.group(1)


def get_device(req: Request) -> Answer:
    found = _read(req, lambda db: registry.get_device(db, _device(req), req.server.overdue_after))
    if found is None:
        raise Problem(404, "unknown_device", f"no device {_device(req)!r}")
    return 200, found


def device_history(req: Request) -> Answer:
    get_device(req)
    limit = req.query_int("limit", 1, registry.HISTORY_KEPT, HISTORY_PAGE)
    before = req.query_int("before", 1, 2**62, None)
    page: dict[str, int] = {"limit": limit or HISTORY_PAGE}
    if before is not None:
        page["before"] = before
    return 200, _read(req, lambda db: registry.history(db, _device(req), **page))


def device_health(req: Request) -> Answer:
    """The device's health series: `since` (epoch seconds, exclusive), `limit` newest."""
    get_device(req)
    limit = req.query_int("limit", 1, registry.HEALTH_KEPT, registry.HEALTH_KEPT)
    since: float | None = None
    if "since" in req.query:
        try:
            since = float(req.query["since"][-1])
        except ValueError:
            raise Problem(400, "bad_query", "since must be a time in seconds") from None
        if since != since or since in (float("inf"), float("-inf")):
            raise Problem(400, "bad_query", "since must be a time in seconds")
    return 200, _read(
        req,
        lambda db: registry.health_series(
            db, _device(req), since=since, limit=limit or registry.HEALTH_KEPT
        ),
    )


def get_events(req: Request) -> Answer:
    """Fleet events after the cursor `after` (the `next` of the last answer); without it the
    newest. With nothing new it waits up to `wait` seconds (default 25) for something."""
    assert req.who is not None
    after: dict[str, int] | None = None
    if "after" in req.query:
        after = registry.parse_cursor(req.query["after"][-1])
        if after is None:
            raise Problem(400, "bad_query", "after must be the `next` of an earlier answer")
    wait = req.query_int("wait", 0, int(EVENTS_WAIT), int(EVENTS_WAIT))
    audit = req.who.may("operator")  # the audit log is not a viewer's
    deadline = time.monotonic() + (wait or 0)
    while True:
        found = _read(req, lambda db: registry.events(db, after, audit=audit))
        if found["events"] or after is None or time.monotonic() >= deadline:
            return 200, found
        time.sleep(EVENTS_POLL)


def get_device_config(req: Request) -> Answer:
    found = _read(req, lambda db: registry.device_config(db, _device(req)))
    if found is None:
        raise Problem(404, "no_config", f"nothing set for {_device(req)!r}")
    return 200, found


def put_device_config(req: Request) -> Answer:
    device = _device(req)

    def work(reg: registry.Registry) -> Any:
        overlay = check_overlay(req.body())
        reg.set_device_config(check_device(device), overlay, time.time())
        return registry.device_config(reg.db, device)

    return _change(req, work)


def delete_device_config(req: Request) -> Answer:
    device = _device(req)
    return _change(
        req,
        lambda reg: {"device": device, "version": reg.set_device_config(device, None, time.time())},
    )


def check_config(req: Request) -> Answer:
    """A dry run of PUT /groups/NAME/config and PUT /devices/ID/config: the overlay checked
    with the same rules (the agent's), nothing stored. 200 either way, with the problems."""
    try:
        check_overlay(req.body())
    except OverlayError as exc:
        return 200, {"ok": False, "problems": exc.problems}
    return 200, {"ok": True, "problems": []}


def list_groups(req: Request) -> Answer:
    return 200, _read(req, registry.list_groups)


def get_group(req: Request) -> Answer:
    name = req.match.group(1)
    found = _read(req, lambda db: registry.group_config(db, name))
    if found is None:
        raise Problem(404, "unknown_group", f"no group {name!r}")
    return 200, found


def put_group_config(req: Request) -> Answer:
    name = req.match.group(1)

    def work(reg: registry.Registry) -> Any:
        overlay = check_overlay(req.body())
        versions = reg.set_group_config(check_group(name), overlay, time.time())
        return {"name": name, "config": overlay, "versions": versions}

    return _change(req, work)


def add_members(req: Request) -> Answer:
    name = req.match.group(1)

    def work(reg: registry.Registry) -> Any:
        body = req.body()
        devices = body.get("devices") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("device"), str):
            devices = [body["device"]]
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise OverlayError(['the body must be {"device": ID} or {"devices": [ID, ...]}'])
        for d in devices:
            check_device(d)
        return {"name": name, "versions": reg.add_members(name, devices, time.time())}

    return _change(req, work)


def remove_member(req: Request) -> Answer:
    name, device = req.match.group(1), req.match.group(2)
    return _change(
        req, lambda reg: {"name": name, "versions": reg.remove_members(name, [device], time.time())}
    )


def _unique(kind: str, prefix: str, ids: list[str]) -> str:
    found = [i for i in ids if i.startswith(prefix)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise Problem(404, f"unknown_{kind}", f"no {kind} {prefix!r}")
    shown = ", ".join(sorted(found)[:5])
    raise Problem(409, "ambiguous", f"{kind} {prefix!r} is ambiguous: {shown}")


def artifact_users(db: Any) -> dict[str, list[dict[str, str]]]:
    """sha256 -> what still needs the artifact: each update job with a device whose state is
    not final, and each rollout that has not ended (`db`: rolloutstore.connect)."""
    found: dict[str, list[dict[str, str]]] = {}
    for row in db.execute(
        "SELECT u.id, u.artifact FROM update_jobs u WHERE EXISTS (SELECT 1 FROM device_jobs d"
        f" WHERE d.job = u.id AND d.state NOT IN {jobstore.FINAL_SQL}) ORDER BY u.created"
    ):
        found.setdefault(row[1], []).append({"kind": "job", "id": row[0], "state": "unfinished"})
    ended = ",".join(f"'{s}'" for s in sorted(ENDED))
    for row in db.execute(
        f"SELECT id, state, spec FROM rollouts WHERE state NOT IN ({ended}) ORDER BY created"
    ):
        sha = json.loads(row[2]).get("artifact")
        found.setdefault(sha, []).append({"kind": "rollout", "id": row[0], "state": row[1]})
    return found


def _users(req: Request) -> dict[str, list[dict[str, str]]]:
    return _rollout_db(req, artifact_users)  # type: ignore[no-any-return]


def list_artifacts(req: Request) -> Answer:
    users = _users(req)
    return 200, [
        {**a.to_json(), "used_by": users.get(a.sha256, [])} for a in req.server.artifacts.list()
    ]


def get_artifact(req: Request) -> Answer:
    """One artifact, what still uses it, and its signature checked again now (when the
    service has --artifact-signing-cert; "not_checked" otherwise)."""
    store = req.server.artifacts
    sha = _unique("artifact", req.match.group(1), [a.sha256 for a in store.list()])
    found = store.get(sha)
    if found is None:
        raise Problem(404, "unknown_artifact", f"no artifact {sha!r}")
    return 200, {
        **found.to_json(),
        "used_by": _users(req).get(sha, []),
        "signature": store.signature(sha),
    }


def delete_artifact(req: Request) -> Answer:
    """Remove an artifact's file and record, unless an unfinished job or a rollout that has
    not ended names it (409 with what uses it)."""
    store = req.server.artifacts
    sha = _unique("artifact", req.match.group(1), [a.sha256 for a in store.list()])
    req.audit_detail = {"sha256": sha}
    found = store.get(sha)
    if found is None:
        raise Problem(404, "unknown_artifact", f"no artifact {sha!r}")
    db = req.server.db
    # under the write lock: no job or rollout is written between the look and the removal
    # (jobs and rollouts look their artifact up under the same lock)
    with db.write():
        users = artifact_users(db).get(sha, [])
        if users:
            raise Problem(
                409,
                "in_use",
                [
                    f"artifact {sha[:12]} is in use by {u['kind']} {u['id']} ({u['state']}):"
                    f" delete it when the {u['kind']} has ended"
                    for u in users
                ],
            )
        store.remove(sha)
    req.audit_detail = {"sha256": sha, "version": found.version}
    return 200, {"sha256": sha, "version": found.version, "deleted": True}


def _upload(req: Request, take: Callable[[Path], T]) -> T:
    """The request's body in a file beside the store, given to `take`; its refusal a 400."""
    store = req.server.artifacts
    store.root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store.root, prefix=".upload-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            req.handler.copy_body(out, req.server.max_artifact)
        try:
            return take(tmp)
        except ArtifactError as exc:
            # the temporary name means nothing to the operator: say "the upload"
            raise Problem(
                400, "invalid_artifact", str(exc).replace(str(tmp), "the upload")
            ) from None
    finally:
        tmp.unlink(missing_ok=True)


def upload_artifact(req: Request) -> Answer:
    """POST /artifacts?version=V&hardware=BOARD=REV,REV: the body is the .swu."""
    version = req.query.get("version", [None])[-1]
    hardware: dict[str, list[str]] | None = None
    for spec in req.query.get("hardware", []):
        board, sep, revs = spec.partition("=")
        if not sep or not revs:
            raise Problem(400, "bad_query", f"hardware {spec!r}: expected BOARD=REV[,REV...]")
        hardware = hardware or {}
        hardware[board] = revs.split(",")
    store = req.server.artifacts
    added = _upload(req, lambda tmp: store.add(tmp, version=version, hardware=hardware))
    req.audit_detail = {"sha256": added.sha256, "version": added.version}
    return 201, added.to_json()


def upload_delta_part(req: Request) -> Answer:
    """POST /artifacts/{id}/zck, then /artifacts/{id}/delta: the chunks' zchunk file, then
    the delta .swu naming it (issue 14). The delta replaces any the artifact had."""
    store = req.server.artifacts
    sha = _unique("artifact", req.match.group(1), [a.sha256 for a in store.list()])
    if store.get(sha) is None:
        raise Problem(404, "unknown_artifact", f"no artifact {sha!r}")
    if req.match.group(2) == "zck":
        zck = _upload(req, lambda tmp: store.add_zck(sha, tmp))
        req.audit_detail = {"sha256": sha, **zck}
        return 201, zck
    added = _upload(req, lambda tmp: store.add_delta(sha, tmp))
    req.audit_detail = {"sha256": sha, "delta": added.delta}
    return 201, added.to_json()


def list_jobs(req: Request) -> Answer:
    return 200, _read(req, jobstore.list_jobs)


def get_job(req: Request) -> Answer:
    def work(db: Any) -> Any:
        ids = [r[0] for r in db.execute("SELECT id FROM update_jobs")]
        return jobstore.get_job(db, _unique("job", req.match.group(1), ids))

    return 200, _read(req, work)


def create_job(req: Request) -> Answer:
    body = req.body()
    ok = isinstance(body, dict) and isinstance(body.get("artifact"), str)
    device = body.get("device") if isinstance(body, dict) else None
    group = body.get("group") if isinstance(body, dict) else None
    if not ok or not (isinstance(device, str) or isinstance(group, str)):
        problem = 'the body must be {"artifact": SHA256, "device": ID} or {..., "group": NAME}'
        raise Problem(400, "invalid", problem)
    try:
        device = check_device(device) if isinstance(device, str) else None
        group = check_group(group) if isinstance(group, str) else None
    except OverlayError as exc:
        raise Problem(400, "invalid", exc.problems) from None
    download_only, install_at = body.get("download_only", False), body.get("install_at")
    if not isinstance(download_only, bool):
        raise Problem(400, "invalid", "download_only must be true or false")
    if install_at is not None and (
        isinstance(install_at, bool) or not isinstance(install_at, int | float) or install_at < 0
    ):
        raise Problem(400, "invalid", "install_at must be a time in seconds since the epoch")
    db = req.server.db
    try:
        job = jobstore.create_job(
            db,
            req.server.artifacts,
            body["artifact"],
            device=device,
            group=group,
            now=time.time(),
            download_only=download_only,
            install_at=install_at,
        )
    except jobstore.JobError as exc:
        raise Problem(409, "refused", str(exc)) from None
    req.server.changed()
    return 201, job


def control_job(req: Request) -> Answer:
    """install or cancel the held devices of a download-only job (all, or `devices`)."""
    body = req.body() if req.handler.headers.get("Content-Length", "0") != "0" else {}
    devices = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(body, dict) or (
        devices is not None
        and (not isinstance(devices, list) or not all(isinstance(d, str) for d in devices))
    ):
        raise Problem(400, "invalid", 'the body must be {} or {"devices": [ID, ...]}')
    change = jobstore.release if req.match.group(2) == "install" else jobstore.cancel_held
    db = req.server.db
    try:
        ids = [r[0] for r in db.execute("SELECT id FROM update_jobs")]
        job = _unique("job", req.match.group(1), ids)
        req.audit_detail = {"job": job}
        changed = change(db, job, devices)
        found = jobstore.get_job(db, job)
    except jobstore.JobError as exc:
        raise Problem(409, "refused", str(exc)) from None
    req.server.changed()
    return 200, {**(found or {}), "changed": changed}


def _rollout_db(req: Request, work: Callable[[Any], Any]) -> Any:
    try:
        return _with_db(req.server.db, work)
    except RolloutError as exc:  # a valid request the fleet's state does not allow
        raise Problem(409, "refused", exc.problems) from None


def list_rollouts(req: Request) -> Answer:
    return 200, _rollout_db(req, rolloutstore.list_all)


def get_rollout(req: Request) -> Answer:
    def work(db: Any) -> Any:
        return rolloutstore.get(db, _unique("rollout", req.match.group(1), rolloutstore.ids(db)))

    return 200, _rollout_db(req, work)


def create_rollout(req: Request) -> Answer:
    assert req.who is not None
    try:
        spec = parse_spec(req.body())
    except RolloutError as exc:
        raise Problem(400, "invalid", exc.problems) from None
    who = req.who.name
    made = _rollout_db(
        req, lambda db: rolloutstore.create(db, req.server.artifacts, spec, time.time(), who)
    )
    req.server.changed()
    return 201, made


def control_rollout(req: Request) -> Answer:
    assert req.who is not None
    who = req.who.name

    def work(db: Any) -> Any:
        rollout = _unique("rollout", req.match.group(1), rolloutstore.ids(db))
        req.audit_detail = {"rollout": rollout}
        return rolloutstore.control(db, rollout, req.match.group(2), time.time(), who)

    done = _rollout_db(req, work)
    req.server.changed()
    return 200, done


def get_audit(req: Request) -> Answer:
    limit = req.query_int("limit", 1, operators.AUDIT_PAGE_MAX, 100) or 100
    before = req.query_int("before", 1, 2**62, None)
    return 200, _read(req, lambda db: operators.audit(db, limit=limit, before=before))


def _operator_call(req: Request, work: Callable[[Any], Any]) -> Any:
    try:
        return _read(req, work)
    except OperatorError as exc:
        raise Problem(
            exc.status, "refused" if exc.status != 404 else "not_found", str(exc)
        ) from None


def list_operators(req: Request) -> Answer:
    return 200, _read(req, operators.list_operators)


def add_operator(req: Request) -> Answer:
    body = req.body()
    if not isinstance(body, dict):
        raise Problem(400, "invalid", 'the body must be {"name", "role"[, "password"]}')
    password = body.get("password")
    if password is not None and not isinstance(password, str):
        raise Problem(400, "invalid", "password must be a string")
    found = _operator_call(
        req,
        lambda db: operators.add_operator(
            db, body.get("name"), body.get("role"), password, time.time()
        ),
    )
    return 201, found


def change_operator(req: Request) -> Answer:
    """Admins change anyone's role or password; any operator changes their own password."""
    assert req.who is not None
    name, body = req.match.group(1), req.body()
    if not isinstance(body, dict) or not set(body) <= {"role", "password"} or not body:
        raise Problem(400, "invalid", 'the body must be {"role": ROLE} and/or {"password": ...}')
    if not req.who.may("admin") and (name != req.who.name or "role" in body):
        raise Problem(403, "forbidden", "only an admin changes roles or another's password")
    return 200, _operator_call(
        req,
        lambda db: operators.change_operator(
            db, name, role=body.get("role"), password=body.get("password")
        ),
    )


def remove_operator(req: Request) -> Answer:
    name = req.match.group(1)
    _operator_call(req, lambda db: operators.remove_operator(db, name, time.time()))
    return 200, {"name": name, "removed": True}


def list_tokens(req: Request) -> Answer:
    assert req.who is not None
    asked = req.query.get("operator", [req.who.name])[-1]
    wanted = None if asked == "*" else asked  # "*": every operator's
    if wanted != req.who.name and not req.who.may("admin"):
        raise Problem(403, "forbidden", "only an admin sees another operator's tokens")
    return 200, _read(req, lambda db: operators.list_tokens(db, wanted))


def create_token(req: Request) -> Answer:
    assert req.who is not None
    body = req.body()
    if not isinstance(body, dict) or not isinstance(body.get("label"), str):
        raise Problem(400, "invalid", 'the body must be {"label": TEXT[, "ttl": SECONDS]}')
    owner = body.get("operator", req.who.name)
    if owner != req.who.name and not req.who.may("admin"):
        raise Problem(403, "forbidden", "only an admin makes tokens for another operator")
    ttl = body.get("ttl")
    if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)):
        raise Problem(400, "invalid", "ttl must be a number of seconds")
    made = _operator_call(
        req, lambda db: operators.create_token(db, owner, body["label"], time.time(), ttl)
    )
    req.audit_detail = {"operator": owner, "label": body["label"], "token": made["id"]}
    return 201, made


def revoke_token(req: Request) -> Answer:
    assert req.who is not None
    token_id = req.match.group(1)
    token = _read(req, lambda db: operators.get_token(db, token_id))
    if token is None or (token["operator"] != req.who.name and not req.who.may("admin")):
        raise Problem(404, "not_found", f"no token {token_id!r}")
    _operator_call(req, lambda db: operators.revoke_token(db, token_id, time.time()))
    return 200, {"id": token_id, "revoked": True}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", None, healthz, "/healthz"),
    Route("POST", "/login", None, login, "/login"),
    Route("GET", "/openapi.json", "viewer", openapi, "/openapi.json"),
    Route("GET", "/whoami", "viewer", whoami, "/whoami"),
    Route("GET", "/devices", "viewer", list_devices, "/devices"),
    Route("GET", "/fleet", "viewer", fleet_counts, "/fleet"),
    Route("GET", rf"/devices/({_DEVICE})", "viewer", get_device, "/devices/{id}"),
    Route(
        "GET", rf"/devices/({_DEVICE})/history", "viewer", device_history, "/devices/{id}/history"
    ),
    Route("GET", rf"/devices/({_DEVICE})/health", "viewer", device_health, "/devices/{id}/health"),
    Route(
        "GET", rf"/devices/({_DEVICE})/config", "viewer", get_device_config, "/devices/{id}/config"
    ),
    Route(
        "PUT",
        rf"/devices/({_DEVICE})/config",
        "operator",
        put_device_config,
        "/devices/{id}/config",
    ),
    Route(
        "DELETE",
        rf"/devices/({_DEVICE})/config",
        "operator",
        delete_device_config,
        "/devices/{id}/config",
    ),
    Route("POST", "/config/check", "viewer", check_config, "/config/check", audited=False),
    Route("GET", "/groups", "viewer", list_groups, "/groups"),
    Route("GET", rf"/groups/({_GROUP})", "viewer", get_group, "/groups/{name}"),
    Route(
        "PUT", rf"/groups/({_GROUP})/config", "operator", put_group_config, "/groups/{name}/config"
    ),
    Route(
        "POST", rf"/groups/({_GROUP})/members", "operator", add_members, "/groups/{name}/members"
    ),
    Route(
        "DELETE",
        rf"/groups/({_GROUP})/members/({_DEVICE})",
        "operator",
        remove_member,
        "/groups/{name}/members/{id}",
    ),
    Route("GET", "/artifacts", "viewer", list_artifacts, "/artifacts"),
    Route("POST", "/artifacts", "operator", upload_artifact, "/artifacts", upload=True),
    Route(
        "POST",
        rf"/artifacts/([0-9a-f]{{{PREFIX_MIN},64}})/(zck|delta)",
        "operator",
        upload_delta_part,
        "/artifacts/{id}/{part}",
        upload=True,
    ),
    Route(
        "GET",
        rf"/artifacts/([0-9a-f]{{{PREFIX_MIN},64}})",
        "viewer",
        get_artifact,
        "/artifacts/{id}",
    ),
    Route(
        "DELETE",
        rf"/artifacts/([0-9a-f]{{{PREFIX_MIN},64}})",
        "operator",
        delete_artifact,
        "/artifacts/{id}",
    ),
    Route("GET", "/jobs", "viewer", list_jobs, "/jobs"),
    Route("POST", "/jobs", "operator", create_job, "/jobs"),
    Route("GET", rf"/jobs/({_JOB})", "viewer", get_job, "/jobs/{id}"),
    Route(
        "POST", rf"/jobs/({_JOB})/(install|cancel)", "operator", control_job, "/jobs/{id}/{action}"
    ),
    Route("GET", "/rollouts", "viewer", list_rollouts, "/rollouts"),
    Route("POST", "/rollouts", "operator", create_rollout, "/rollouts"),
    Route("GET", rf"/rollouts/({_ROLLOUT})", "viewer", get_rollout, "/rollouts/{id}"),
    Route(
        "POST",
        rf"/rollouts/({_ROLLOUT})/(pause|resume|cancel|install)",
        "operator",
        control_rollout,
        "/rollouts/{id}/{action}",
    ),
    Route("GET", "/events", "viewer", get_events, "/events"),
    Route("GET", "/audit", "operator", get_audit, "/audit"),
    Route("GET", "/operators", "admin", list_operators, "/operators"),
    Route("POST", "/operators", "admin", add_operator, "/operators"),
    Route("PUT", rf"/operators/({_OPERATOR})", "viewer", change_operator, "/operators/{name}"),
    Route("DELETE", rf"/operators/({_OPERATOR})", "admin", remove_operator, "/operators/{name}"),
    Route("GET", "/tokens", "viewer", list_tokens, "/tokens"),
    Route("POST", "/tokens", "viewer", create_token, "/tokens"),
    Route("DELETE", r"/tokens/([0-9a-f]{16})", "viewer", revoke_token, "/tokens/{id}"),
)
_COMPILED = [(r, r.pattern) for r in ROUTES]


def find_route(method: str, path: str) -> tuple[Route, re.Match[str]] | str:
    """The route and its match, or "not_found" / "method_not_allowed"."""
    seen = False
    for route, pattern in _COMPILED:
        m = pattern.fullmatch(path)
        if m is None:
            continue
        if route.method == method:
            return route, m
        seen = True
    return "method_not_allowed" if seen else "not_found"


# -- the console's files --------------------------------------------------------


def console_root() -> Any:
    return resources.files("twelvefactor_services.management").joinpath("console")


def console_file(name: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of the console file ``name`` (relative, "/"-separated), or None:
    a name of an unknown type, with a part starting with a dot, or not a file in the folder."""
    if _CONSOLE_NAME.fullmatch(name) is None or ".." in name:
        return None
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    content_type = CONSOLE_TYPES.get(suffix)
    if content_type is None:
        return None
    node = console_root()
    for part in name.split("/"):
        node = node.joinpath(part)
    if not node.is_file():
        return None
    return content_type, node.read_bytes()


# -- the server ----------------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class ApiServer(TlsServer):
    def __init__(
        self,
        address: tuple[str, int],
        db: Db,
        health: Callable[[], dict[str, Any]],
        context: ssl.SSLContext,
        names: list[str],
        *,
        artifacts: ArtifactStore,
        changed: Callable[[], None] = lambda: None,
        max_artifact: int = MAX_ARTIFACT,
        overdue_after: float = OVERDUE_AFTER,
    ) -> None:
        self.db = db
        self.overdue_after = overdue_after  # a sleeping device's slack past its check-in
        self.artifacts = artifacts
        self.health = health
        self.changed = changed  # a desired configuration changed: publish soon
        self.context = context
        self.max_artifact = max_artifact
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        super().__init__(address, Handler)
        self.site = Site.of([*names, address[0]], self.server_address[1])

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="http-api", daemon=True)
        t.start()
        return t

    def login_allowed(self, name: str) -> bool:
        with self._lock:
            recent = self._failures.get(name)
            now = time.monotonic()
            while recent and recent[0] < now - LOGIN_WINDOW:
                recent.popleft()
            return recent is None or len(recent) < LOGIN_FAILURES

    def login_failed(self, name: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # names nobody has: do not grow without bound
                self._failures.clear()
            self._failures.setdefault(name, deque(maxlen=LOGIN_FAILURES)).append(time.monotonic())


class Handler(TlsHandler):
    server: ApiServer
    server_version = "twelvefactor-management"
    timeout = IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)

    def _length(self, limit: int) -> int:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Problem(
                411, "length_required", "a body with Content-Length is required"
            ) from None
        if not 0 <= length <= limit:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise Problem(413, "too_large", f"the body must be at most {limit} bytes")
        return length

    def read_body(self, limit: int) -> bytes:
        length = self._length(limit)
        self._body_read = True
        return self.rfile.read(length)

    def copy_body(self, out: Any, limit: int) -> None:
        left = self._length(limit)
        self._body_read = True
        while left > 0:
            block = self.rfile.read(min(left, 1 << 20))
            if not block:
                raise Problem(400, "invalid", "the body ended before its Content-Length")
            out.write(block)
            left -= len(block)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body, indent=1).encode() + b"\n"
        if not getattr(self, "_body_read", True) and self.headers.get("Content-Length"):
            self.close_connection = True  # an unread body would be taken for the next request
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="twelvefactor-management"')
        self.end_headers()
        self.wfile.write(data)

    def _serve(self) -> None:
        self._body_read = False
        method = self.command
        raw_path, _, query = self.path.partition("?")
        if method == "GET" and (raw_path in ("/", "/console") or raw_path.startswith("/console/")):
            self._console(raw_path)
            return
        path = raw_path.rstrip("/") or "/"
        who: Principal | None = None
        req: Request | None = None
        route: Route | None = None
        status: int
        try:
            found = find_route(method, path)
            route = found[0] if isinstance(found, tuple) else None
            has_body = self.headers.get("Content-Length", "0") not in ("", "0")
            has_body = has_body or "Transfer-Encoding" in self.headers
            check_request(
                self.server.site,
                method,
                self.headers.get("Host"),
                self.headers.get("Origin"),
                self.headers.get("Content-Type"),
                has_body,
                upload=route is not None and route.upload,
            )
            if "Transfer-Encoding" in self.headers:
                raise Problem(411, "length_required", "send the body with Content-Length")
            if not isinstance(found, tuple):
                code = 404 if found == "not_found" else 405
                raise Problem(code, found, f"{method} {path}")
            route, match = found
            if route.role is not None:
                who = self._authenticate()
                if not who.may(route.role):
                    raise Problem(403, "forbidden", f"{method} {path} needs the {route.role} role")
            req = Request(
                self.server,
                who,
                match,
                urllib.parse.parse_qs(query, max_num_fields=20),
                self,
            )
            status, answer = route.work(req)
        except Refused as exc:
            status, answer = exc.status, {"error": exc.error, "message": str(exc)}
        except Problem as exc:
            status, answer = exc.status, {"error": exc.error, "problems": exc.problems}
        except ValueError as exc:  # parse_qs: too many fields
            status, answer = 400, {"error": "bad_query", "problems": [str(exc)]}
        except Exception as exc:  # a fault of ours (a busy or damaged registry): say so, audit it
            log.exception("%s %s failed", method, path)
            self.close_connection = True
            status, answer = 500, {"error": "internal", "problems": [type(exc).__name__]}
        # in the audit log before the answer: a client told a change is done (or refused)
        # finds it there (written after, a quick client's next read could miss it)
        if method != "GET" and (route is None or route.audited):
            self._audit(who, method, path, status, None if req is None else req.audit_detail)
        self._send(status, answer)

    def _console(self, path: str) -> None:
        """A file of the web console (no token: the pages hold no data; the API calls they
        make carry the operator's token). Only files that are there, by name: no listing,
        no path outside the folder."""
        try:
            check_request(self.server.site, "GET", self.headers.get("Host"), None, None, False)
        except Refused as exc:
            self._send_console(exc.status, "text/plain; charset=utf-8", f"{exc}\n".encode())
            return
        if path in ("/", "/console"):
            self._send_console(302, "text/plain; charset=utf-8", b"", location="/console/")
            return
        found = console_file(path.removeprefix("/console/") or "index.html")
        if found is None:
            self._send_console(404, "text/plain; charset=utf-8", b"not found\n")
        else:
            self._send_console(200, *found)

    def _send_console(
        self, status: int, content_type: str, data: bytes, location: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Security-Policy", CONSOLE_CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def _authenticate(self) -> Principal:
        token = bearer(self.headers.get("Authorization"))
        if token is None:
            raise Problem(401, "unauthorized", "send Authorization: Bearer TOKEN")
        who = _with_db(self.server.db, lambda db: operators.authenticate(db, token, time.time()))
        if who is None:
            raise Problem(401, "unauthorized", "the token is unknown, expired or revoked")
        return who  # type: ignore[no-any-return]

    def _audit(
        self, who: Principal | None, method: str, path: str, status: int, detail: Any
    ) -> None:
        try:
            _with_db(
                self.server.db,
                lambda db: operators.record(db, time.time(), who, method, path, status, detail),
            )
        except Exception:
            log.exception("audit entry for %s %s (%d) not recorded", method, path, status)
        log.info("%s %s %s -> %d", who.name if who else "-", method, path, status)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


def _with_db(db: Db, work: Callable[[Db], Any]) -> Any:
    """`work` on the database; one out of reach is a 503, not a crash of the request."""
    try:
        return work(db)
    except StoreError as exc:
        log.warning("the database: %s", exc)
        raise Problem(503, "registry_unavailable", "the database is out of reach") from None
