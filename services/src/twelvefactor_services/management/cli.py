"""twelvefactor-management: run the service, or operate the fleet through its HTTPS API.

`serve` and `bootstrap` (the first admin and their token) run on the service
host against the registry file. Every other command talks to the operator
API with a token, so it works from a laptop: `login` once (or set
TWELVEFACTOR_API_URL / TWELVEFACTOR_API_TOKEN / TWELVEFACTOR_API_CA), then
`devices`, `config ...`, `artifact ...`, `job ...`, `operator ...`,
`token ...`, `audit`. Times are ISO 8601 in local time; `--json` prints the
API's answer as it is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twelvefactor_services import service_args
from twelvefactor_services.management import devicelist, operators
from twelvefactor_services.management.api_client import (
    ApiError,
    Credentials,
    ManagementClient,
    credentials_file,
)
from twelvefactor_services.management.configlogic import OverlayError, check_overlay
from twelvefactor_services.management.jobs import JOB_QUIET_AFTER
from twelvefactor_services.management.logic import OVERDUE_AFTER
from twelvefactor_services.management.store import Db
from twelvefactor_services.management.store import Error as StoreError

if TYPE_CHECKING:
    from twelvefactor_services.management.service import ArtifactServing, OperatorApi

PROG = "twelvefactor-management"
DB_HELP = "the management database: a SQLite file (made if missing) or a postgresql:// URL"


def iso(value: float | None) -> str:
    """An epoch time as ISO 8601 in local time, to the second ('-' for none)."""
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _read_secret(path: str | None, prompt: str) -> str:
    """A password from a file ('-': stdin), or asked for on the terminal."""
    if path == "-":
        return sys.stdin.readline().rstrip("\n")
    if path is not None:
        return Path(path).read_text(encoding="utf-8").rstrip("\n")
    return getpass.getpass(prompt)


def _read_overlay(args: argparse.Namespace) -> Any:
    """The overlay from --json TEXT or --file PATH (.toml read as TOML, anything else as JSON)."""
    if args.json_text is not None:
        text, is_toml = args.json_text, False
    else:
        path = Path(args.file)
        text = sys.stdin.read() if args.file == "-" else path.read_text(encoding="utf-8")
        is_toml = path.suffix == ".toml"
    try:
        overlay = tomllib.loads(text) if is_toml else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise OverlayError([f"not valid {'TOML' if is_toml else 'JSON'}: {exc}"]) from None
    return check_overlay(overlay)  # the same rules as the service and the agent, before sending


# -- commands over the API -----------------------------------------------------

Command = Callable[[ManagementClient, argparse.Namespace], int]


DEVICE_FILTERS = ("q", "group", "tag", "version", "presence")  # devicelist.DeviceQuery's


def _devices(api: ManagementClient, args: argparse.Namespace) -> int:
    """Every device the filters match, a page of the API's at a time."""
    asked = {k: getattr(args, k) for k in DEVICE_FILTERS if getattr(args, k) is not None}
    rows: list[dict[str, Any]] = []
    while True:
        after = {"after": rows[-1]["id"]} if rows else {}
        page = api.get("/devices", limit=str(devicelist.PAGE_MAX), **asked, **after)
        rows += page
        if len(page) < devicelist.PAGE_MAX:
            break
    if args.json:
        _print_json(rows)
        return 0
    _table(
        [
            [
                r["id"],
                "retired" if r.get("retired") else r.get("presence") or "unknown",
                iso(r["last_online_change"]),
                iso(r["health_ts"]),
            ]
            for r in rows
        ],
        ["DEVICE", "STATE", "SINCE", "LAST HEALTH"],
    )
    print(f"{len(rows)} device(s)")
    return 0


def _device(api: ManagementClient, args: argparse.Namespace) -> int:
    found = api.get(f"/devices/{args.id}")
    found["history"] = api.get(f"/devices/{args.id}/history")
    if args.json:
        _print_json(found)
        return 0
    state = found.get("presence") or "unknown"
    print(f"device     {found['id']}")
    print(f"state      {state} since {iso(found['last_online_change'])}")
    if state in ("asleep", "overdue"):
        print(f"check-in   by {iso(found['next_checkin'])}")
    print(f"first seen {iso(found['first_seen'])}")
    hw = found.get("hardware") or {}
    board = f"{hw.get('board')} {hw.get('revision')}" if hw else "-"
    print(f"hardware   {board}; tags {', '.join(found.get('tags') or []) or '-'}")
    retired = found.get("retired")
    enrolled = f"enrolled   {iso(found.get('enrolled'))}"
    print(enrolled + (f"; retired {iso(retired['at'])}" if retired else ""))
    print(f"health     {iso(found['health_ts'])}: {json.dumps(found['health'])}")
    print(f"meta       {iso(found['meta_ts'])}: {json.dumps(found['meta'])}")
    for h in found["history"]:
        change = "online" if h["online"] else f"offline ({h['reason']})"
        print(f"  {iso(h['ts'])}  {change}")
    return 0


def _config(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.target == "device":
        path = f"/devices/{args.name}/config"
        if args.action == "show":
            _print_json(api.get(path))
            return 0
        if args.action == "clear":
            done = api.call("DELETE", path)
        else:
            done = api.call("PUT", path, _read_overlay(args))
        print(f"{args.name}: desired configuration version {done['version']}")
        return 0
    if args.action == "show":
        _print_json(api.get("/groups" if args.name is None else f"/groups/{args.name}"))
        return 0
    if args.action == "set":
        done = api.call("PUT", f"/groups/{args.name}/config", _read_overlay(args))
        versions = done["versions"]
    elif args.action == "add":
        done = api.call("POST", f"/groups/{args.name}/members", {"devices": args.devices})
        versions = done["versions"]
    else:
        versions = {}
        for device in args.devices:
            versions |= api.call("DELETE", f"/groups/{args.name}/members/{device}")["versions"]
    for device, version in sorted(versions.items()):
        print(f"{device}: desired configuration version {version}")
    print(f"group {args.name}: {len(versions)} device(s) changed")
    return 0


def _hardware_text(hardware: dict[str, list[str]]) -> str:
    return " ".join(f"{b or '*'}={','.join(r)}" for b, r in hardware.items())


def _print_artifact(a: dict[str, Any]) -> None:
    print(f"artifact {a['sha256']}")
    print(f"  version {a['version']}, {a['size']} bytes, added {iso(a['added'])}")
    print(f"  hardware {_hardware_text(a['hardware'])}")
    if a.get("delta"):
        d = a["delta"]
        print(f"  delta {d['sha256'][:12]}, {d['size']} bytes; chunks {d['zck'][:12]}.zck")
    if "signature" in a:
        sig = a["signature"]
        said = {"not_checked": "not checked (no --artifact-signing-cert)"}.get(sig["status"])
        print(f"  signature {said or sig['status'] + ' by ' + str(sig['certificate'])}")
        for problem in sig["problems"]:
            print(f"    {problem}")
    for user in a.get("used_by", []):
        print(f"  used by {user['kind']} {user['id']} ({user['state']})")


def _print_job(j: dict[str, Any]) -> None:
    print(f"job {j['id']}  artifact {j['artifact'][:12]}  {j['target']}  {iso(j['created'])}")
    if any(d["install"] != "now" for d in j["devices"]) or j.get("install_at"):
        when = "on the go" if j.get("install_at") is None else f"from {iso(j['install_at'])}"
        print(f"  download only: installs {when} (`job install {j['id']}`)")
    for d in j["devices"]:
        pct = "" if d["percent"] is None else f" {d['percent']}%"
        why = f": {d['reason']}" if d["reason"] else ""
        mode = {"hold": ", held", "cancel": ", cancel sent"}.get(d["install"], "")
        path = f", by {d['path']}" if d.get("path") else ""
        print(f"  {d['device']}  {d['state']}{pct}{why}  ({iso(d['updated'])}{mode}{path})")
        if d.get("fallback"):
            print(f"    the delta was given up: {d['fallback']}")


def _artifact(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.action == "add":
        query: dict[str, str | list[str]] = {}
        if args.version:
            query["version"] = args.version
        if args.hardware:
            query["hardware"] = args.hardware
        if (args.delta is None) != (args.zck is None):
            raise SystemExit("--delta and --zck go together: the delta .swu and its chunks")
        added = api.upload("/artifacts", args.file, query)
        if args.delta is not None:
            api.upload(f"/artifacts/{added['sha256']}/zck", args.zck, {})
            added = api.upload(f"/artifacts/{added['sha256']}/delta", args.delta, {})
        _print_json(added) if args.json else _print_artifact(added)
        return 0
    if args.action == "show":
        found = api.get(f"/artifacts/{args.id}")
        _print_json(found) if args.json else _print_artifact(found)
        return 0
    if args.action == "delete":
        gone = api.call("DELETE", f"/artifacts/{args.id}")
        if args.json:
            _print_json(gone)
        else:
            print(f"deleted artifact {gone['sha256']} (version {gone['version']})")
        return 0
    rows = api.get("/artifacts")
    if args.json:
        _print_json(rows)
        return 0
    _table(
        [
            [
                a["sha256"][:12],
                a["version"],
                str(a["size"]),
                iso(a["added"]),
                _hardware_text(a["hardware"]),
            ]
            for a in rows
        ],
        ["ID", "VERSION", "SIZE", "ADDED", "HARDWARE"],
    )
    print(f"{len(rows)} artifact(s); name one by any unique prefix of its id")
    return 0


def _job(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        sha = api.get(f"/artifacts/{args.artifact}")["sha256"]  # a unique prefix is enough
        body = {"artifact": sha, "device": args.device} if args.device else {}
        if args.group:
            body = {"artifact": sha, "group": args.group}
        if args.download_only or args.install_at is not None:
            body["download_only"] = True
        if args.install_at is not None:
            body["install_at"] = args.install_at
        made = api.call("POST", "/jobs", body)
        _print_json(made) if args.json else _print_job(made)
        return 0
    if args.action in ("install", "cancel"):
        picked = {"devices": args.device} if args.device else None
        done = api.call("POST", f"/jobs/{args.id}/{args.action}", picked)
        if args.json:
            _print_json(done)
        else:
            what = "released for install" if args.action == "install" else "sent a cancel"
            print(f"job {done['id']}: {len(done['changed'])} held device(s) {what}")
        return 0
    if args.action == "show":
        found = api.get(f"/jobs/{args.id}")
        _print_json(found) if args.json else _print_job(found)
        return 0
    rows = api.get("/jobs")
    if args.json:
        _print_json(rows)
        return 0
    table = []
    for j in rows:
        states: dict[str, int] = {}
        for d in j["devices"]:
            states[d["state"]] = states.get(d["state"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        table.append([j["id"], j["artifact"][:12], j["target"], iso(j["created"]), summary])
    _table(table, ["JOB", "ARTIFACT", "TARGET", "CREATED", "DEVICES"])
    return 0


def _phase_arg(text: str) -> dict[str, float | int]:
    """--phase 4 (devices) or --phase 25% (of the rollout's devices)."""
    try:
        if text.endswith("%"):
            return {"percent": float(text[:-1])}
        return {"count": int(text)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a count (4) or a percent (25%)") from None


def _time_arg(text: str) -> float:
    """--start 2026-12-24T08:00 (local time unless an offset is given)."""
    try:
        return dt.datetime.fromisoformat(text).astimezone().timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: an ISO 8601 time, 2026-12-24T08:00") from None


def _bar(done: int, size: int, width: int = 20) -> str:
    filled = 0 if size == 0 else round(width * done / size)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _print_rollout(r: dict[str, Any]) -> None:
    target = f"{len(r['devices'] or [])} devices"
    if r["group"]:
        target = f"group {r['group']}"
    elif r.get("tags"):
        target = f"devices tagged {', '.join(r['tags'])}"
    phase = f"phase {r['phase']} of {len(r['phase_progress'])}" if r["phase"] else "not started"
    print(f"rollout {r['id']}  {r['state']}  {phase}")
    print(f"  artifact {r['artifact'][:12]}, {target}, by {r['created_by']} at {iso(r['created'])}")
    print(
        f"  advance at {r['success_percent']:g}% succeeded (at least {r['success_min']}); "
        f"{r['on_error']} at {r['error_percent']:g}% failed (after {r['error_min']} executed)"
    )
    if r.get("download_only"):
        when = "on the go" if r.get("install_at") is None else f"from {iso(r['install_at'])}"
        go = f"; installing since {iso(r['go'])}" if r.get("go") else ""
        print(f"  download only: installs {when} (`rollout install {r['id']}`){go}")
    if r["reason"]:
        print(f"  {r['state']}: {r['reason']}")
    for p in r["phase_progress"]:
        counts = {k: v for k, v in p.items() if k not in ("phase", "size", "started")}
        done = counts.get("succeeded", 0)
        text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "not started"
        print(f"  phase {p['phase']}  {_bar(done, p['size'])}  {p['size']} device(s): {text}")
    for e in r["events"]:
        print(f"  {iso(e['ts'])}  {e['state']}: {e['reason']}")
    for d in r.get("devices") or []:
        if d["state"] in ("failed", "rolled_back", "skipped"):
            print(f"  {d['device']} (phase {d['phase']}) {d['state']}: {d['reason']}")


def _rollout(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        body: dict[str, Any] = {
            "artifact": api.get(f"/artifacts/{args.artifact}")["sha256"],
            "phases": args.phase or [{"percent": 100}],
            "success_percent": args.success,
            "success_min": args.success_min,
            "error_percent": args.error,
            "error_min": args.error_min,
            "on_error": args.on_error,
        }
        if args.group:
            body["group"] = args.group
        elif args.tags:
            body["tags"] = [t for t in args.tags.split(",") if t]
        else:
            body["devices"] = [d for d in args.devices.split(",") if d]
        if args.start is not None:
            body["start_at"] = args.start
        if args.download_only or args.install_at is not None:
            body["download_only"] = True
        if args.install_at is not None:
            body["install_at"] = args.install_at
        made = api.call("POST", "/rollouts", body)
        if args.json:
            _print_json(made)
        else:
            _print_rollout(made)
        return 0
    if args.action in ("pause", "resume", "cancel", "install"):
        done = api.call("POST", f"/rollouts/{args.id}/{args.action}")
        print(f"rollout {done['id']}: {done['state']} ({done['reason']})")
        return 0
    if args.action == "show":
        found = api.get(f"/rollouts/{args.id}")
        if args.json:
            _print_json(found)
        else:
            _print_rollout(found)
        return 0
    rows = api.get("/rollouts")
    if args.json:
        _print_json(rows)
        return 0
    table = []
    for r in rows:
        size = sum(p["size"] for p in r["phase_progress"])
        done = sum(p.get("succeeded", 0) for p in r["phase_progress"])
        phase = f"{r['phase']}/{len(r['phase_progress'])}"
        table.append(
            [r["id"], r["state"], phase, f"{done}/{size}", iso(r["created"]), r["reason"] or ""]
        )
    _table(table, ["ROLLOUT", "STATE", "PHASE", "SUCCEEDED", "CREATED", "WHY"])
    return 0


def _operator(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = api.get("/operators")
        if args.json:
            _print_json(rows)
        else:
            _table(
                [
                    [o["name"], o["role"], "yes" if o["password"] else "no", iso(o["created"])]
                    for o in rows
                ],
                ["NAME", "ROLE", "PASSWORD", "CREATED"],
            )
        return 0
    if args.action == "remove":
        api.call("DELETE", f"/operators/{args.name}")
        print(f"operator {args.name} removed; their tokens are revoked")
        return 0
    body: dict[str, Any] = {}
    if args.role:
        body["role"] = args.role
    if args.password_file is not None or (args.action == "passwd"):
        body["password"] = _read_secret(args.password_file, f"new password for {args.name}: ")
    if args.action == "add":
        _print_json(api.call("POST", "/operators", {"name": args.name, **body}))
    else:
        _print_json(api.call("PUT", f"/operators/{args.name}", body))
    return 0


def _token(api: ManagementClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        body: dict[str, Any] = {"label": args.label}
        if args.ttl is not None:
            body["ttl"] = args.ttl
        if args.operator:
            body["operator"] = args.operator
        made = api.call("POST", "/tokens", body)
        print(made["token"])  # shown this once; only its hash is kept
        print(
            f"token {made['id']} for {made['operator']}, expires {iso(made['expires'])}",
            file=sys.stderr,
        )
        return 0
    if args.action == "revoke":
        api.call("DELETE", f"/tokens/{args.id}")
        print(f"token {args.id} revoked")
        return 0
    rows = api.get("/tokens", **({"operator": "*"} if args.all else {}))
    if args.json:
        _print_json(rows)
        return 0
    _table(
        [
            [
                t["id"],
                t["operator"],
                t["label"],
                iso(t["created"]),
                iso(t["expires"]),
                iso(t["last_used"]),
            ]
            for t in rows
        ],
        ["ID", "OPERATOR", "LABEL", "CREATED", "EXPIRES", "LAST USED"],
    )
    return 0


def _audit(api: ManagementClient, args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.before:
        query["before"] = str(args.before)
    rows = api.get("/audit", **query)
    if args.json:
        _print_json(rows)
        return 0
    for e in reversed(rows):
        detail = "" if e["detail"] is None else " " + json.dumps(e["detail"], sort_keys=True)
        who = e["operator"] or "(unauthenticated)"
        print(
            f"{e['id']:>7} {iso(e['ts'])} {who} {e['method']} {e['path']} -> {e['status']}{detail}"
        )
    return 0


def _whoami(api: ManagementClient, _args: argparse.Namespace) -> int:
    me = api.get("/whoami")
    print(f"{me['name']} ({me['role']}) at {api.url}, token {me['token']}")
    return 0


def _logout(api: ManagementClient, _args: argparse.Namespace) -> int:
    me = api.get("/whoami")
    api.call("DELETE", f"/tokens/{me['token']}")
    credentials_file().unlink(missing_ok=True)
    print(f"logged out of {api.url}; token {me['token']} revoked")
    return 0


COMMANDS: dict[str, Command] = {
    "devices": _devices,
    "device": _device,
    "config": _config,
    "artifact": _artifact,
    "job": _job,
    "rollout": _rollout,
    "operator": _operator,
    "token": _token,
    "audit": _audit,
    "whoami": _whoami,
    "logout": _logout,
}


def _login(args: argparse.Namespace) -> int:
    ca = args.ca.resolve() if args.ca else None
    api = ManagementClient(args.url, ca=ca)
    password = _read_secret(args.password_file, f"password for {args.user} at {args.url}: ")
    made = api.call("POST", "/login", {"name": args.user, "password": password})
    path = Credentials(args.url, made["token"], ca).save()
    print(f"logged in to {args.url} as {args.user} until {iso(made['expires'])}; token in {path}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    """The first admin and a token for them, on the service host (before any API call works)."""
    db = Db(args.db)
    try:
        password = None
        if args.password_file is not None:
            password = _read_secret(args.password_file, "")
        operators.add_operator(db, args.operator, "admin", password, time.time())
        made = operators.create_token(db, args.operator, "bootstrap", time.time())
    except operators.OperatorError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    if args.token_file is None:
        print(made["token"])
    else:
        fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made["token"] + "\n")
        print(f"admin {args.operator}: token in {args.token_file}")
    return 0


# -- argument parsing ----------------------------------------------------------


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", help="the API, https://HOST:PORT (default: TWELVEFACTOR_API_URL, login)"
    )
    p.add_argument(
        "--ca", type=Path, help="CA certificate the API's certificate is checked against"
    )
    p.add_argument("--token-file", type=Path, help="file holding the token (default: env, login)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _config_parser(sub: Any) -> list[argparse.ArgumentParser]:
    config = sub.add_parser("config", help="desired configuration of devices and groups")
    csub = config.add_subparsers(dest="action", required=True)

    def overlay_source(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--file", help="overlay file (.toml as TOML, else JSON; - for stdin)")
        src.add_argument("--set-json", dest="json_text", help="overlay as JSON text")

    p = csub.add_parser("set", help="set a device's own overlay")
    p.add_argument("name", metavar="DEVICE")
    overlay_source(p)
    p.set_defaults(target="device")
    p = csub.add_parser("clear", help="remove a device's own overlay (its group's stays)")
    p.add_argument("name", metavar="DEVICE")
    p.set_defaults(target="device")
    p = csub.add_parser("show", help="a device's desired and reported configuration")
    p.add_argument("name", metavar="DEVICE")
    p.set_defaults(target="device")
    group = csub.add_parser("group", help="group overlays and membership")
    gsub = group.add_subparsers(dest="action", required=True)
    p = gsub.add_parser("set", help="create or replace a group's overlay")
    p.add_argument("name", metavar="GROUP")
    overlay_source(p)
    p = gsub.add_parser("add", help="put devices in the group (moving them out of another)")
    p.add_argument("name", metavar="GROUP")
    p.add_argument("devices", nargs="+", metavar="DEVICE")
    p = gsub.add_parser("remove", help="take devices out of the group")
    p.add_argument("name", metavar="GROUP")
    p.add_argument("devices", nargs="+", metavar="DEVICE")
    p = gsub.add_parser("show", help="one group, or all")
    p.add_argument("name", metavar="GROUP", nargs="?")
    group.set_defaults(target="group")
    return [p for name, p in csub.choices.items() if name != "group"] + list(gsub.choices.values())


def _download_only_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--download-only",
        action="store_true",
        help=f"devices download and hold; they install on `{what} install` or at --install-at",
    )
    p.add_argument(
        "--install-at", type=_time_arg, metavar="ISO8601", help="download only: install from then"
    )


def _fleet_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    leaves: list[argparse.ArgumentParser] = []
    p = sub.add_parser("devices", help="list devices (all, or those matching every filter)")
    p.add_argument("--search", dest="q", metavar="TEXT", help="part of the device id")
    p.add_argument("--group", help="in this configuration group")
    p.add_argument("--tag", help="enrolled with this tag")
    p.add_argument("--version", help="running this version (unknown: none reported)")
    p.add_argument("--presence", choices=devicelist.PRESENCES)
    leaves.append(p)
    p = sub.add_parser("device", help="one device with its online history")
    p.add_argument("id")
    leaves.append(p)
    leaves += _config_parser(sub)
    art = sub.add_parser("artifact", help=".swu artifacts")
    asub = art.add_subparsers(dest="action", required=True)
    p = asub.add_parser("add", help="upload a .swu; version and hardware are read from it")
    p.add_argument("file", type=Path)
    p.add_argument("--version", help="expected version (refused if the file says otherwise)")
    p.add_argument(
        "--hardware", action="append", metavar="BOARD=REV[,REV]", help="expected compatibility"
    )
    p.add_argument(
        "--delta",
        type=Path,
        metavar="DELTA.swu",
        help="its delta (twelvefactor-artifact build --delta-url), which devices try first",
    )
    p.add_argument("--zck", type=Path, metavar="FILE.zck", help="the delta's chunks (with --delta)")
    asub.add_parser("list", help="stored artifacts")
    p = asub.add_parser("show", help="one artifact, by any unique prefix of its id")
    p.add_argument("id")
    p = asub.add_parser(
        "delete", help="delete an artifact no unfinished job and no running rollout uses"
    )
    p.add_argument("id", help="any unique prefix of its id")
    leaves += asub.choices.values()
    job = sub.add_parser("job", help="update jobs")
    jsub = job.add_subparsers(dest="action", required=True)
    p = jsub.add_parser("create", help="update a device or a group to an artifact")
    p.add_argument("--artifact", required=True, metavar="ID", help="any unique prefix")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID")
    target.add_argument("--group", metavar="NAME")
    _download_only_args(p, "job")
    for action, text in (
        ("install", "the go for a download-only job's held devices"),
        ("cancel", "held devices drop the download and end the job failed"),
    ):
        p = jsub.add_parser(action, help=text)
        p.add_argument("id", metavar="JOB", help="any unique prefix")
        p.add_argument("--device", action="append", metavar="ID", help="only these (repeat)")
    p = jsub.add_parser("show", help="one job with each device's state")
    p.add_argument("id", metavar="JOB", help="any unique prefix")
    jsub.add_parser("list", help="all jobs")
    leaves += jsub.choices.values()
    ro = sub.add_parser("rollout", help="phased rollouts that stop themselves")
    rsub = ro.add_subparsers(dest="action", required=True)
    p = rsub.add_parser("create", help="roll an artifact out in phases")
    p.add_argument("--artifact", required=True, metavar="ID", help="any unique prefix")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--group", metavar="NAME")
    target.add_argument("--devices", metavar="ID,ID,...")
    target.add_argument("--tags", metavar="TAG,TAG,...", help="enrolled devices with all these")
    p.add_argument(
        "--phase",
        action="append",
        type=_phase_arg,
        help="a phase: a count (4) or a percent (25%%); repeat; the last takes the rest",
    )
    p.add_argument(
        "--success",
        type=float,
        default=100.0,
        metavar="PERCENT",
        help="succeeded in a phase to start the next (default 100)",
    )
    p.add_argument("--success-min", type=int, default=1, metavar="N")
    p.add_argument(
        "--error",
        type=float,
        default=20.0,
        metavar="PERCENT",
        help="failed or rolled back (of those executed) that stops it (default 20)",
    )
    p.add_argument(
        "--error-min",
        type=int,
        default=1,
        metavar="N",
        help="executed devices before the error threshold applies",
    )
    p.add_argument("--on-error", choices=("pause", "abort"), default="pause")
    p.add_argument("--start", type=_time_arg, metavar="ISO8601", help="start time (default: now)")
    _download_only_args(p, "rollout")
    rsub.add_parser("list", help="all rollouts")
    for action in ("show", "pause", "resume", "cancel", "install"):
        helped = "the go for a download-only rollout" if action == "install" else ""
        p = rsub.add_parser(action, help=helped or f"{action} a rollout")
        p.add_argument("id", metavar="ROLLOUT", help="any unique prefix")
    leaves += rsub.choices.values()
    op = sub.add_parser("operator", help="operators and their roles (admin)")
    osub = op.add_subparsers(dest="action", required=True)
    p = osub.add_parser("add", help="a new operator")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=operators.ROLES)
    p.add_argument("--password-file", help="the password ('-': stdin); none: tokens only")
    p = osub.add_parser("set", help="change an operator's role")
    p.add_argument("name")
    p.add_argument("--role", choices=operators.ROLES)
    p.add_argument("--password-file", help="also set the password from this file")
    p = osub.add_parser("passwd", help="set a password (your own, or anyone's as admin)")
    p.add_argument("name")
    p.add_argument("--password-file", help="the password ('-': stdin; default: asked)")
    p.set_defaults(role=None)
    osub.add_parser("list", help="all operators")
    p = osub.add_parser("remove", help="remove an operator and revoke their tokens")
    p.add_argument("name")
    leaves += osub.choices.values()
    tok = sub.add_parser("token", help="API tokens for scripts")
    tsub = tok.add_subparsers(dest="action", required=True)
    p = tsub.add_parser("create", help="a new token (printed once)")
    p.add_argument("--label", required=True)
    p.add_argument("--ttl", type=float, help="seconds until it expires (default: until revoked)")
    p.add_argument("--operator", help="for another operator (admin)")
    p = tsub.add_parser("list", help="your tokens")
    p.add_argument("--all", action="store_true", help="every operator's (admin)")
    p = tsub.add_parser("revoke", help="revoke a token")
    p.add_argument("id")
    leaves += tsub.choices.values()
    p = sub.add_parser("audit", help="the audit log, oldest of the page first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, metavar="ID", help="entries older than this one")
    leaves.append(p)
    leaves.append(sub.add_parser("whoami", help="who the token stands for"))
    leaves.append(sub.add_parser("logout", help="revoke the saved token and forget it"))
    return leaves


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the service in the foreground")
    service_args.add_service_args(serve)
    serve.add_argument("--db", required=True, help=DB_HELP)
    serve.add_argument("--api-host", default="127.0.0.1", help="operator API address to bind")
    serve.add_argument("--api-port", type=int, default=9443, help="operator API port (HTTPS)")
    serve.add_argument("--api-cert", type=Path, required=True, help="operator API certificate")
    serve.add_argument("--api-key", type=Path, required=True, help="its private key")
    serve.add_argument(
        "--api-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the API answers to besides its certificate's names (repeatable)",
    )
    serve.add_argument(
        "--max-artifact-bytes", type=int, default=4 * 1024**3, help="largest .swu upload"
    )
    serve.add_argument(
        "--artifact-dir", type=Path, help="default: artifacts/ next to --db (a SQLite file)"
    )
    serve.add_argument(
        "--shard",
        help="the hub shard whose broker this copy consumes from: it publishes only for the"
        " devices of that shard (default: a fleet of one shard)",
    )
    serve.add_argument(
        "--no-consume",
        dest="consume",
        action="store_false",
        help="an API copy: serve the operator API and publish, but take none of the devices'"
        " messages (beside copies that do: a burst of reports never delays an operator's"
        " call; docs/scale.md)",
    )
    serve.add_argument(
        "--overdue-after",
        type=_seconds,
        default=OVERDUE_AFTER,
        metavar="SECONDS",
        help="a sleeping device is overdue this long after its announced check-in "
        f"(default {OVERDUE_AFTER:.0f}: the link's and its clock's slack)",
    )
    serve.add_argument(
        "--job-quiet-after",
        type=_seconds,
        default=JOB_QUIET_AFTER,
        metavar="SECONDS",
        help="an online device's unfinished update job with no report for this long is"
        " offered again (the device answers a job it finished with its final report:"
        f" one lost on the way still arrives; default {JOB_QUIET_AFTER:.0f})",
    )
    serve.add_argument(
        "--artifact-signing-cert",
        type=Path,
        metavar="FILE",
        help="the certificate devices check .swu signatures with: an artifact it does not "
        "verify is refused when added",
    )
    serve.add_argument("--artifact-port", type=int, help="serve artifacts over HTTPS here")
    serve.add_argument("--artifact-host", default="127.0.0.1", help="address to bind")
    serve.add_argument(
        "--artifact-url", help="base URL devices use (default https://ARTIFACT_HOST:PORT)"
    )
    serve.add_argument(
        "--artifact-cert", type=Path, metavar="FILE", help="the artifact server's certificate"
    )
    serve.add_argument(
        "--artifact-key", type=Path, metavar="FILE", help="the artifact server's private key"
    )
    serve.add_argument(
        "--device-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate whose devices may download artifacts (the device CA)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    p = sub.add_parser("bootstrap", help="on the service host: the first admin and a token")
    p.add_argument("--db", required=True, help=DB_HELP)
    p.add_argument("--operator", required=True, help="the admin's name")
    p.add_argument("--token-file", help="write the token here (mode 0600) instead of printing it")
    p.add_argument("--password-file", help="also give the admin a password ('-': stdin)")
    p = sub.add_parser("login", help="log in with a password; the token is saved (0600)")
    p.add_argument("url", help="https://HOST:PORT")
    p.add_argument("--user", required=True)
    p.add_argument("--ca", type=Path, help="CA certificate of the API's certificate")
    p.add_argument("--password-file", help="the password ('-': stdin; default: asked)")
    for leaf in _fleet_parsers(sub):
        _client_options(leaf)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bootstrap":
            return _bootstrap(args)
        if args.command == "login":
            return _login(args)
        token = None
        if args.token_file is not None:
            token = args.token_file.read_text(encoding="utf-8").strip()
        api = ManagementClient.of(Credentials.find(args.url, token, args.ca))
        return COMMANDS[args.command](api, args)
    except OverlayError as exc:
        for problem in exc.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    except ApiError as exc:
        for problem in exc.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 2 if exc.status in (400, 413, 415) else 1  # bad input: 2, refused: 1
    except (OSError, StoreError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from twelvefactor_services.management.service import ManagementConfig, ManagementService

    service_args.setup_logging(args.log_level)
    if "://" in args.db and args.artifact_dir is None:
        print(f"{PROG}: --db {args.db} is a database server: give --artifact-dir", file=sys.stderr)
        return 2
    ident = service_args.identity(args, "management")
    cfg = ManagementConfig(
        db=args.db,
        identity=ident,
        broker=service_args.endpoint(args),
        group=service_args.group(args, "management", ident),
        api=_operator_api(args),
        instance=args.instance,
        ready_file=args.ready_file,
        artifact_dir=args.artifact_dir,
        artifacts=_serving(args),
        signing_cert=_signing_cert(args.artifact_signing_cert),
        overdue_after=args.overdue_after,
        job_quiet_after=args.job_quiet_after,
        shard=args.shard,
        consume=args.consume,
    )
    ManagementService(cfg).run()
    return 0


def _signing_cert(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise SystemExit(f"--artifact-signing-cert {path}: no such file")
    return path


def _operator_api(args: argparse.Namespace) -> OperatorApi:
    from twelvefactor_services.management.service import OperatorApi

    for p in (args.api_cert, args.api_key):
        if not p.is_file():
            raise SystemExit(
                f"missing {p}: make it with 'twelvefactor-pki server PKI NAME --ip ADDRESS'"
            )
    return OperatorApi(
        cert=args.api_cert,
        key=args.api_key,
        names=tuple(args.api_name),
        host=args.api_host,
        port=args.api_port,
        max_artifact=args.max_artifact_bytes,
    )


def _serving(args: argparse.Namespace) -> ArtifactServing | None:
    from twelvefactor_services.management.service import ArtifactServing

    if args.artifact_port is None:
        return None
    files = {
        "--artifact-cert": args.artifact_cert,
        "--artifact-key": args.artifact_key,
        "--device-ca": args.device_ca,
    }
    if None in files.values():
        raise SystemExit("--artifact-port needs --artifact-cert, --artifact-key and --device-ca")
    service_args.require_files("management", files)
    host = f"[{args.artifact_host}]" if ":" in args.artifact_host else args.artifact_host
    url = args.artifact_url or f"https://{host}:{args.artifact_port}"
    return ArtifactServing(
        args.artifact_host,
        args.artifact_port,
        args.artifact_cert,
        args.artifact_key,
        args.device_ca,
        url,
    )


if __name__ == "__main__":
    sys.exit(main())
